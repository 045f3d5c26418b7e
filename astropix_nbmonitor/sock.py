"""UDP transport of readout records: a receiver and a sender.

Each readout travels as one UDP datagram holding one readout record
(docs/format.md section 1). Two kinds of address are understood:

* a unicast address, by default ``127.0.0.1`` (the DAQ host and the monitor
  on the same machine): the receiver binds to that address and port, and a
  second receiver on the same address and port is refused;
* a multicast group (``224.0.0.0/4``, e.g. ``239.1.1.1``): every receiver binds
  ``(group, port)`` with ``SO_REUSEADDR`` (and ``SO_REUSEPORT``) and joins the
  group, so several monitors can listen to one DAQ at once. Binding to the
  group address (Linux, macOS) keeps out unicast datagrams sent to the port;
  where the system refuses it, the receiver binds every interface
  (``("", port)``) instead. Either way a multicast monitor is open to the
  network: any host that reaches the group can send to it
  (:meth:`MulticastReceiver.exposure` says so in words, and the dashboard
  shows it). The default, ``127.0.0.1``, accepts datagrams from this machine
  only.

The receiver asks the kernel for a large receive buffer (16 MiB by default)
so that bursts are absorbed while the reading thread is busy; see
:class:`MulticastReceiver` for what Linux grants.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import sys
from collections.abc import Iterable
from types import TracebackType

from .fmt import AbstractAstroPixReadout, AstroPix4Readout

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_PORT",
    "DEFAULT_RCVBUF",
    "LOCAL_HOST",
    "MAX_DATAGRAM_SIZE",
    "AddressInUseError",
    "InvalidAddressError",
    "MulticastReceiver",
    "MulticastSender",
    "describe_exposure",
    "is_multicast",
    "resolve_address",
]

logger = logging.getLogger(__name__)

#: The default address: plain UDP on the loopback interface.
LOCAL_HOST = "127.0.0.1"
#: The default multicast group (administratively scoped).
DEFAULT_GROUP = "239.1.1.1"
#: The default UDP port.
DEFAULT_PORT = 5007
#: The receive buffer asked of the kernel by default (bytes).
DEFAULT_RCVBUF = 16 * 1024 * 1024
#: Size of a receive buffer large enough for any UDP datagram over IPv4.
MAX_DATAGRAM_SIZE = 65536

# Linux socket options that the socket module does not always export.
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)
_IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49 if sys.platform.startswith("linux") else None)
_INADDR_ANY = "0.0.0.0"


class InvalidAddressError(ValueError):
    """A group or port that cannot be used: not IPv4, not resolvable, out of range."""


class AddressInUseError(OSError):
    """The address and port are already bound by another socket.

    ``errno`` is ``EADDRINUSE``; ``address`` and ``port`` are the ones asked for.
    """

    def __init__(self, message: str, *, address: str, port: int) -> None:
        super().__init__(message)
        self.errno = errno.EADDRINUSE
        self.address = address
        self.port = port


def resolve_address(group: str) -> str:
    """Return ``group`` as a dotted IPv4 address, resolving host names.

    Raises
    ------
    InvalidAddressError
        If ``group`` is not a string, or neither an IPv4 address nor a name
        that resolves to one.
    """
    if not isinstance(group, str) or not group.strip():
        msg = f"invalid address {group!r}: expected an IPv4 address such as {LOCAL_HOST!r} or {DEFAULT_GROUP!r}"
        raise InvalidAddressError(msg)
    name = group.strip()
    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        pass
    if all(c.isdigit() or c == "." for c in name):
        # Not a dotted quad; do not let the resolver read "1.2.3" as 1.2.0.3.
        msg = f"invalid address {group!r}: an IPv4 address has four numbers 0..255 separated by dots"
        raise InvalidAddressError(msg)
    try:
        return socket.gethostbyname(name)
    except (OSError, UnicodeError):
        msg = (
            f"invalid address {group!r}: not an IPv4 address and not a host name that resolves to one "
            f"(use e.g. {LOCAL_HOST!r} or a multicast group such as {DEFAULT_GROUP!r})"
        )
        raise InvalidAddressError(msg) from None


def is_multicast(address: str) -> bool:
    """True if the dotted IPv4 ``address`` is a multicast group (224.0.0.0/4)."""
    return ipaddress.IPv4Address(address).is_multicast


def describe_exposure(group: str, interface: str | None = None, *, all_interfaces: bool = False) -> str:
    """Who can send to a receiver of ``group``, in one sentence (for the dashboard).

    ``interface`` is the interface a multicast group is joined on (``None``:
    the system's choice); ``all_interfaces`` says the socket is bound to
    every interface rather than to the group address.
    """
    group = resolve_address(group)
    if is_multicast(group):
        joined = interface not in (None, _INADDR_ANY)
        where = f"interface {interface}" if joined else "the system's default interface"
        bound = (
            "the socket is bound to all interfaces, so unicast datagrams to the port from any host are accepted too"
            if all_interfaces
            else "unicast datagrams to the port are ignored (the socket is bound to the group address, "
            "not to all interfaces)"
        )
        return (
            f"multicast group {group} joined on {where}: open to the network, "
            f"any host that reaches the group can send to this monitor; {bound}"
        )
    address = ipaddress.ip_address(group)
    if address.is_loopback:
        return f"loopback only ({group}): only this machine can send to this monitor"
    if address.is_unspecified:
        return f"bound to all interfaces ({group}): any host that reaches this machine can send to this monitor"
    return f"bound to {group}: any host that reaches this address can send to this monitor"


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        msg = f"invalid port {port!r}: expected an integer from 0 to 65535 (0 lets the system choose)"
        raise InvalidAddressError(msg)
    return port


def _bind_error(exc: OSError, address: str, port: int, multicast: bool) -> OSError:
    """Turn a failed bind into an error that says what to do."""
    where = f"{address}:{port}"
    if exc.errno == errno.EADDRINUSE:
        another_port = "choose another port (port=... in Python, --port on the command line)"
        if multicast:
            hint = f"another program holds the port without sharing it; stop it, or {another_port}"
        else:
            hint = (
                "another receiver (a monitor, a recorder, another notebook kernel?) is already listening there; "
                f"stop it, {another_port}, or use a multicast group (e.g. {DEFAULT_GROUP}) so that several "
                "receivers can listen at once"
            )
        return AddressInUseError(f"cannot listen on {where}: address already in use; {hint}", address=address, port=port)
    if exc.errno == errno.EADDRNOTAVAIL:
        return InvalidAddressError(
            f"cannot listen on {where}: {address} is not an address of this machine "
            f"(use {LOCAL_HOST} for a sender on this machine, or a multicast group such as {DEFAULT_GROUP})"
        )
    if exc.errno == errno.EACCES:
        return PermissionError(exc.errno, f"cannot listen on {where}: permission denied (ports below 1024 need root)")
    return OSError(exc.errno, f"cannot listen on {where}: {exc.strerror or exc}")


class _UdpEndpoint:
    """What the receiver and the sender share: one socket, an address, closed once."""

    group: str
    port: int
    _sock: socket.socket | None

    def address(self) -> tuple[str, int]:
        """The ``(group, port)`` of this endpoint (the port actually bound, for a receiver)."""
        return self.group, self.port

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed)."""
        return -1 if self._sock is None else self._sock.fileno()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._sock is None

    def close(self) -> None:
        """Close the socket (a receiver leaves its group); harmless when already closed."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
            logger.debug("closed %s on %s:%d", type(self).__name__, self.group, self.port)

    def __enter__(self) -> _UdpEndpoint:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class MulticastReceiver(_UdpEndpoint):
    """A UDP socket that receives readout records, unicast or multicast.

    Parameters
    ----------
    readout_class : type
        The readout class that :meth:`receive` builds (``readout_class.from_bytes``).
    group : str
        A unicast address to bind to (default ``127.0.0.1``), or a multicast
        group to join. Host names are resolved.
    port : int
        The UDP port; 0 lets the system choose (read it back with :meth:`address`).
    rcvbuf : int or None
        Receive buffer to ask of the kernel, in bytes (default 16 MiB); ``None``
        or 0 keeps the system default. On Linux an unprivileged request is
        capped by ``net.core.rmem_max``; as root ``SO_RCVBUFFORCE`` lifts the
        cap. The value the kernel reports is kept in :attr:`rcvbuf` (Linux
        reports twice the usable size: it counts its bookkeeping).
    timeout : float or None
        Time limit of :meth:`receive`, :meth:`recv_bytes` and
        :meth:`receive_into`, in seconds; ``None`` blocks. On expiry they raise
        :class:`TimeoutError`.
    interface : str or None
        For a multicast group, the address of the interface on which to join
        it; by default ``INADDR_ANY`` (the system's choice).

    Raises
    ------
    InvalidAddressError
        If the group or port is invalid, or a unicast address is not one of
        this machine's.
    AddressInUseError
        If a unicast address and port are already taken.
    """

    def __init__(
        self,
        readout_class: type[AbstractAstroPixReadout] = AstroPix4Readout,
        group: str = LOCAL_HOST,
        port: int = DEFAULT_PORT,
        *,
        rcvbuf: int | None = DEFAULT_RCVBUF,
        timeout: float | None = None,
        interface: str | None = None,
    ) -> None:
        self.readout_class = readout_class
        self.group = resolve_address(group)
        port = _check_port(port)
        self.multicast = is_multicast(self.group)
        self.interface = resolve_address(interface) if interface is not None else _INADDR_ANY
        self.rcvbuf: int | None = None
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if self.multicast:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if hasattr(socket, "SO_REUSEPORT"):
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    except OSError:  # pragma: no cover - kernels without it
                        pass
            if rcvbuf:
                self.rcvbuf = self._grow_rcvbuf(sock, int(rcvbuf))
            else:
                self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            self.bound_to = self._bind(sock, port)
            if self.multicast:
                self._join(sock)
            sock.settimeout(timeout)
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock
        self.port = sock.getsockname()[1]
        logger.info(
            "listening on %s:%d (%s), receive buffer %s bytes",
            self.group,
            self.port,
            "multicast" if self.multicast else "unicast",
            self.rcvbuf,
        )

    # -- set-up ---------------------------------------------------------------

    def _bind(self, sock: socket.socket, port: int) -> str:
        """Bind; return the address bound (the group, or ``""`` for every interface)."""
        if self.multicast:
            try:
                sock.bind((self.group, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise _bind_error(exc, self.group, port, True) from None
                logger.info("cannot bind to the group address %s (%s): binding every interface", self.group, exc)
            else:
                return self.group
        bind_to = "" if self.multicast else self.group
        try:
            sock.bind((bind_to, port))
        except OSError as exc:
            raise _bind_error(exc, self.group, port, self.multicast) from None
        return bind_to

    def exposure(self) -> str:
        """Who can send to this receiver, in one sentence (shown on the dashboard)."""
        return describe_exposure(self.group, self.interface, all_interfaces=self.multicast and not self.bound_to)

    @staticmethod
    def _grow_rcvbuf(sock: socket.socket, size: int) -> int:
        """Ask for a ``size``-byte receive buffer; return what the kernel reports."""
        forced = False
        if _SO_RCVBUFFORCE is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
                forced = True
            except OSError:
                forced = False  # not root (no CAP_NET_ADMIN): fall back quietly
        if not forced:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            except OSError as exc:  # pragma: no cover - platform dependent
                logger.warning("could not set a %d-byte receive buffer: %s", size, exc)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if granted < size:
            logger.warning(
                "asked for a %d-byte UDP receive buffer, the kernel granted %d; bursts may be lost. "
                "On Linux raise the cap with: sysctl -w net.core.rmem_max=%d",
                size,
                granted,
                size,
            )
        else:
            logger.debug("receive buffer: asked %d bytes, kernel reports %d", size, granted)
        return granted

    def _join(self, sock: socket.socket) -> None:
        mreq = struct.pack("=4s4s", socket.inet_aton(self.group), socket.inet_aton(self.interface))
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        except OSError as exc:
            msg = (
                f"cannot join multicast group {self.group} on interface {self.interface}: "
                f"{exc.strerror or exc}; check that the machine has a multicast route "
                f"(e.g. 'ip route add 224.0.0.0/4 dev lo' to use loopback only) or use {LOCAL_HOST}"
            )
            raise OSError(exc.errno, msg) from None
        if _IP_MULTICAST_ALL is not None:
            # Linux delivers every joined group to every socket on the port by
            # default; receive only the group joined here.
            try:
                sock.setsockopt(socket.IPPROTO_IP, _IP_MULTICAST_ALL, 0)
            except OSError:  # pragma: no cover - old kernels
                pass

    # -- receiving ------------------------------------------------------------

    @property
    def socket(self) -> socket.socket:
        """The underlying socket (for the listener's fast path).

        Raises
        ------
        OSError
            If the receiver is closed.
        """
        if self._sock is None:
            msg = f"receiver on {self.group}:{self.port} is closed"
            raise OSError(errno.EBADF, msg)
        return self._sock

    def recv_bytes(self) -> bytes:
        """Receive one datagram and return its bytes (not validated)."""
        return self.socket.recv(MAX_DATAGRAM_SIZE)

    def receive_into(self, buffer: bytearray | memoryview) -> int:
        """Receive one datagram into ``buffer``; return its size in bytes.

        ``buffer`` should hold :data:`MAX_DATAGRAM_SIZE` bytes, or a longer
        datagram is truncated.
        """
        return self.socket.recv_into(buffer)

    def receive(self) -> AbstractAstroPixReadout:
        """Receive one datagram and return it as a readout.

        Raises
        ------
        MalformedReadoutError
            If the datagram is not a readout record.
        TimeoutError
            If ``timeout`` was set and nothing arrived in time.
        """
        return self.readout_class.from_bytes(self.recv_bytes())

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "open"
        return f"{type(self).__name__}(group={self.group!r}, port={self.port}, {state})"


class MulticastSender(_UdpEndpoint):
    """A UDP socket that sends readout records to a unicast address or a group.

    Parameters
    ----------
    group : str
        Destination: a unicast address (default ``127.0.0.1``) or a multicast group.
    port : int
        Destination port (1 to 65535).
    ttl : int
        Multicast time-to-live (hops); 1 keeps datagrams on the local network.
        Ignored for unicast destinations.
    interface : str or None
        For a multicast group, the address of the interface to send from
        (``IP_MULTICAST_IF``); by default the system's choice.

    Notes
    -----
    Multicast loop-back is switched on, so receivers on the sending machine
    get the datagrams too. The socket is not connected: a destination with no
    receiver does not make later sends fail.
    """

    def __init__(
        self, group: str = LOCAL_HOST, port: int = DEFAULT_PORT, ttl: int = 2, *, interface: str | None = None
    ) -> None:
        self.group = resolve_address(group)
        port = _check_port(port)
        if port == 0:
            msg = f"invalid destination port 0 for {self.group}: give the port the receiver listens on"
            raise InvalidAddressError(msg)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 255:
            msg = f"invalid multicast TTL {ttl!r}: expected an integer from 0 to 255"
            raise InvalidAddressError(msg)
        self.port = port
        self.ttl = ttl
        self.multicast = is_multicast(self.group)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if self.multicast:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
                if interface is not None:
                    sock.setsockopt(
                        socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(resolve_address(interface))
                    )
        except BaseException:
            sock.close()
            raise
        self._sock: socket.socket | None = sock
        self._destination = (self.group, self.port)
        logger.info("sending to %s:%d (%s)", self.group, self.port, "multicast" if self.multicast else "unicast")

    def _socket(self) -> socket.socket:
        if self._sock is None:
            msg = f"sender to {self.group}:{self.port} is closed"
            raise OSError(errno.EBADF, msg)
        return self._sock

    def send_data(self, data: bytes) -> int:
        """Send ``data`` as one datagram; return the number of bytes sent.

        Raises
        ------
        ValueError
            If ``data`` is too long for one UDP datagram.
        """
        try:
            return self._socket().sendto(data, self._destination)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                msg = f"a {len(data)}-byte record is too long for one UDP datagram to {self.group}:{self.port}"
                raise ValueError(msg) from None
            raise

    def send_records(self, records: Iterable[bytes]) -> int:
        """Send each of ``records`` as one datagram; return how many were sent."""
        sendto = self._socket().sendto
        destination = self._destination
        count = 0
        for record in records:
            try:
                sendto(record, destination)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    msg = f"a {len(record)}-byte record is too long for one UDP datagram to {self.group}:{self.port}"
                    raise ValueError(msg) from None
                raise
            count += 1
        return count

    def send_readout(self, readout: AbstractAstroPixReadout) -> int:
        """Send a readout as one record; return the number of bytes sent."""
        return self.send_data(readout.to_bytes())

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "open"
        return f"{type(self).__name__}(group={self.group!r}, port={self.port}, ttl={self.ttl}, {state})"
