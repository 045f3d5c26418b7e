"""The listener: a thread that receives readout records into a bounded buffer.

The listener owns the receiving socket (:class:`~astropix_nbmonitor.sock.MulticastReceiver`).
Its loop takes every datagram, checks that it is a readout record (FORMAT.md
section 1, the same checks and the same order as
:func:`~astropix_nbmonitor.fmt.parse_record`), follows the readout ids, and
keeps valid records, as raw ``bytes``, in a buffer of bounded size that the
consumer empties with :meth:`Listener.drain`. Nothing in the loop can be
stopped by its input: malformed datagrams are counted by reason, never raised.

Counters (:meth:`Listener.stats`) are consistent snapshots: the loop receives
a burst of datagrams (until the socket is empty, or at most a few hundred),
then publishes the burst's records and counts in one step, under the lock
that :meth:`Listener.drain` and :meth:`Listener.stats` take. So at any time::

    datagrams == accepted + malformed
    accepted == processed + dropped + buffered

Readout ids
-----------
The first readout received after :meth:`Listener.open` (or
:meth:`Listener.reset_counters`) sets the baseline. Then, with ``last`` the
highest id accepted since the baseline and ``rid`` the new one:

* ``rid == last + 1``: in order.
* ``rid > last + 1``: a gap; ``rid - last - 1`` readouts are counted ``lost``.
* ``rid <= last`` and ``rid`` lies in one of the last 16 gaps: a late
  readout; it counts ``out_of_order`` and is taken back from ``lost``, so
  reordering on the network leaves ``lost`` exact.
* ``rid > last + 1`` by more than 2**24 (16,777,216) ids, minutes of data at
  any rate a DAQ reaches, is counted as a *restart* (a new baseline), not as
  millions of lost readouts: a DAQ that starts its ids at an arbitrary value,
  or a record that is not from this stream, would otherwise bury the real
  loss count (and every later id would count as out of order).
* otherwise, ``rid <= last`` is a DAQ *restart* when ``rid < 16`` (the DAQ
  numbers its readouts from 0, and an id counter wrapping at 2**32 counts as
  a restart too) or when ``rid`` is more than 1024 below ``last`` (far more
  reordering than any network does); ``rid`` becomes the new baseline, no loss
  is counted for the new run's first ids.
* any other ``rid <= last`` (a repeat, or a step back of at most 1024 ids to
  an id not missing) counts ``out_of_order`` (duplicated or reordered) and
  ``last`` is kept.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import mmap
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from .fmt import RECORD_HEADER, RECORD_HEADER_SIZE, AbstractAstroPixReadout, AstroPix4Readout
from .sock import (
    DEFAULT_PORT,
    DEFAULT_RCVBUF,
    LOCAL_HOST,
    MAX_DATAGRAM_SIZE,
    MulticastReceiver,
    describe_exposure,
    resolve_address,
)

__all__ = [
    "DEFAULT_BUFFER_BYTES",
    "IdTracker",
    "MALFORMED_REASONS",
    "RESTART_BACKWARD_JUMP",
    "RESTART_FORWARD_JUMP",
    "RESTART_ID_LIMIT",
    "Listener",
    "ListenerStats",
]

logger = logging.getLogger(__name__)

#: Keys of :attr:`ListenerStats.malformed_by_reason`: the reasons of
#: :class:`~astropix_nbmonitor.fmt.MalformedReadoutError`, plus ``"other"``
#: for a datagram whose handling failed unexpectedly (always 0 unless a bug).
MALFORMED_REASONS = ("short", "header", "length", "other")
#: A step back to an id below this is a DAQ restart.
RESTART_ID_LIMIT = 16
#: Default bound of the bytes of records a listener holds.
DEFAULT_BUFFER_BYTES = 32 * 1024 * 1024
#: A step back by more than this many ids is a DAQ restart.
RESTART_BACKWARD_JUMP = 1024
#: A step forward by more than this many ids is a DAQ restart too, not a loss.
RESTART_FORWARD_JUMP = 1 << 24
#: How many recent gaps in the ids are remembered to recognise late readouts.
_GAP_MEMORY = 16
#: Most datagrams received between two publications of the counters.
_BURST = 256
#: Least interval between two log messages about bad input (s).
_LOG_INTERVAL = 10.0

_RECORD_STRUCT = struct.Struct("<3sIQI")
#: Bytes per receive slot of the batched path: a datagram never exceeds it.
_SLOT = MAX_DATAGRAM_SIZE
_MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)


class _IOVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IOVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


_recvmmsg_function: Any = None  # None: not looked up yet; False: unavailable


def _recvmmsg() -> Any:
    """libc's ``recvmmsg`` as a ctypes function, or None where there is none (non-Linux)."""
    global _recvmmsg_function
    if _recvmmsg_function is None:
        function: Any = False
        if os.name == "posix" and hasattr(socket, "MSG_DONTWAIT"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                function = libc.recvmmsg
                function.restype = ctypes.c_int
                function.argtypes = (
                    ctypes.c_int,
                    ctypes.POINTER(_MMsgHdr),
                    ctypes.c_uint,
                    ctypes.c_int,
                    ctypes.c_void_p,
                )
            except (OSError, AttributeError):
                function = False
        _recvmmsg_function = function
    return _recvmmsg_function or None


class _BatchReceiver:
    """``recvmmsg(2)`` into ``count`` preallocated slots of :data:`_SLOT` bytes.

    The slots are anonymous memory (``mmap``): pages are only backed once a
    datagram is written to them.
    """

    def __init__(self, count: int = 256) -> None:
        function = _recvmmsg()
        if function is None:
            msg = "recvmmsg is not available here"
            raise OSError(errno.ENOSYS, msg)
        self.function = function
        self.count = count
        self.memory = mmap.mmap(-1, count * _SLOT)
        slots = (ctypes.c_char * (count * _SLOT)).from_buffer(self.memory)
        base = ctypes.addressof(slots)
        self.iovecs = (_IOVec * count)()
        self.msgs = (_MMsgHdr * count)()
        for i in range(count):
            self.iovecs[i].iov_base = base + i * _SLOT
            self.iovecs[i].iov_len = _SLOT
            hdr = self.msgs[i].msg_hdr
            hdr.msg_iov = ctypes.pointer(self.iovecs[i])
            hdr.msg_iovlen = 1
        del slots
        #: The slots' bytes.
        self.view = memoryview(self.memory)
        # msg_len and msg_flags of every message, read as unsigned ints.
        stride = ctypes.sizeof(_MMsgHdr)
        uint = ctypes.sizeof(ctypes.c_uint)
        if stride % uint or _MMsgHdr.msg_len.offset % uint or _MsgHdr.msg_flags.offset % uint:  # pragma: no cover
            msg = "unexpected struct mmsghdr layout"
            raise OSError(errno.ENOSYS, msg)
        ints = memoryview(self.msgs).cast("B").cast("I")
        step = stride // uint
        self.lengths = ints[_MMsgHdr.msg_len.offset // uint :: step]
        self.flags = ints[_MsgHdr.msg_flags.offset // uint :: step]
        self.offsets = [i * _SLOT for i in range(count)]


@dataclasses.dataclass(frozen=True)
class ListenerStats:
    """A snapshot of a :class:`Listener`'s counters.

    Attributes
    ----------
    datagrams, bytes : int
        Datagrams and bytes received.
    accepted : int
        Datagrams that are valid readout records.
    malformed : int
        Datagrams that are not (``datagrams == accepted + malformed``).
    malformed_by_reason : dict
        ``malformed`` split by reason (:data:`MALFORMED_REASONS`).
    lost : int
        Readouts missing from gaps in the readout ids.
    out_of_order : int
        Readouts whose id went back a little or repeated (reordered, duplicated).
    restarts : int
        DAQ restarts seen in the ids (see the module documentation).
    dropped : int
        Valid records dropped because the buffer was full.
    processed : int
        Records handed out by :meth:`Listener.drain`.
    buffered : int
        Records in the buffer now (``accepted == processed + dropped + buffered``).
    buffered_bytes : int
        Their bytes (bounded by :attr:`Listener.buffer_bytes`).
    last_datagram_time : float or None
        ``time.time()`` when the last datagram was received, None before any.
    rcvbuf : int or None
        The socket receive buffer the kernel reported (None before ``open()``).
    """

    datagrams: int = 0
    bytes: int = 0
    accepted: int = 0
    malformed: int = 0
    malformed_by_reason: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(MALFORMED_REASONS, 0)
    )
    lost: int = 0
    out_of_order: int = 0
    restarts: int = 0
    dropped: int = 0
    processed: int = 0
    buffered: int = 0
    last_datagram_time: float | None = None
    rcvbuf: int | None = None
    buffered_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dictionary."""
        out = dataclasses.asdict(self)
        out["malformed_by_reason"] = dict(self.malformed_by_reason)
        return out


class Listener:
    """Receive readout records on a thread into a bounded buffer.

    Parameters
    ----------
    readout_class : type
        The readout class of the stream (used by :meth:`drain_readouts`).
    group : str
        Unicast address (default ``127.0.0.1``) or multicast group.
    port : int
        UDP port; 0 lets the system choose at the first :meth:`open`, and
        later opens reuse that port.
    buffer_size : int
        Most records held between two :meth:`drain` calls; when full, new
        records are dropped and counted (``dropped``).
    buffer_bytes : int
        Most bytes of records held (default 32 MiB): with large readouts this
        bound is reached first, so that memory stays bounded whatever the
        datagrams' size (of a flood of 64 kB datagrams it holds about five
        hundred).
    timeout : float
        Longest wait for data before the loop looks at its stop flag (s).
    rcvbuf : int or None
        Socket receive buffer to ask for (see :class:`~astropix_nbmonitor.sock.MulticastReceiver`).
    interface : str or None
        Interface address on which to join a multicast group (default: any).
    batch_receive : bool or None
        Receive with ``recvmmsg(2)``, up to 256 datagrams per system call
        (Linux), rather than with one ``recv()`` per datagram. None (default):
        when available; True: required (``OSError`` if unavailable); False:
        never. Both ways count and keep exactly the same records; if the
        batched way fails with ``ENOSYS`` the loop falls back to ``recv()``.
        :attr:`batch_receive` tells which one the loop uses.

    Examples
    --------
    >>> listener = Listener(port=0).start()            # doctest: +SKIP
    >>> records = listener.drain()                     # doctest: +SKIP
    >>> listener.stop()                                # doctest: +SKIP
    """

    THREAD_NAME = "astropix-listener"

    def __init__(
        self,
        readout_class: type[AbstractAstroPixReadout] = AstroPix4Readout,
        group: str = LOCAL_HOST,
        port: int = DEFAULT_PORT,
        *,
        buffer_size: int = 200_000,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        timeout: float = 0.1,
        rcvbuf: int | None = DEFAULT_RCVBUF,
        interface: str | None = None,
        batch_receive: bool | None = None,
    ) -> None:
        for name, value in (("buffer_size", buffer_size), ("buffer_bytes", buffer_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"invalid {name} {value!r}: expected a positive integer"
                raise ValueError(msg)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
            msg = f"invalid timeout {timeout!r}: expected a positive number of seconds"
            raise ValueError(msg)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            msg = f"invalid port {port!r}: expected an integer from 0 to 65535"
            raise ValueError(msg)
        if batch_receive is not None and not isinstance(batch_receive, bool):
            msg = f"invalid batch_receive {batch_receive!r}: expected True, False or None"
            raise ValueError(msg)
        if batch_receive and _recvmmsg() is None:
            msg = "batch_receive=True: recvmmsg is not available on this system"
            raise OSError(errno.ENOSYS, msg)
        #: True when the loop receives with ``recvmmsg`` (see the parameter).
        self.batch_receive = _recvmmsg() is not None if batch_receive is None else batch_receive
        self._batch_receiver: _BatchReceiver | None = None
        self.readout_class = readout_class
        self.group = resolve_address(group)
        self.port = port
        self.buffer_size = buffer_size
        self.buffer_bytes = buffer_bytes
        self.timeout = float(timeout)
        self.rcvbuf_request = rcvbuf
        self.interface = interface
        self._receiver: MulticastReceiver | None = None
        self._thread: threading.Thread | None = None
        self._control = threading.RLock()  # start/stop/open/close
        self._lock = threading.Lock()  # buffer and published counters
        self._stop_requested = False
        self._run_done = threading.Event()
        self._run_done.set()
        self._close_when_done = False
        self._looping = False
        self._loop_lock = threading.Lock()  # _looping, _close_when_done
        self._reset_ids = False
        self._buffer: list[bytes] = []
        self._buffered_bytes = 0
        self._zero_counters()
        # Id-tracking state and pending counts: touched by the loop only.
        self._ids = IdTracker()
        self._next_log = 0.0

    # -- counters ---------------------------------------------------------------

    def _zero_counters(self) -> None:
        self._datagrams = 0
        self._bytes = 0
        self._accepted = 0
        self._malformed = dict.fromkeys(MALFORMED_REASONS, 0)
        self._lost = 0
        self._out_of_order = 0
        self._restarts = 0
        self._dropped = 0
        self._processed = 0
        self._last_time: float | None = None

    def stats(self) -> ListenerStats:
        """A consistent snapshot of the counters; cheap, callable any time."""
        with self._lock:
            malformed = dict(self._malformed)
            return ListenerStats(
                datagrams=self._datagrams,
                bytes=self._bytes,
                accepted=self._accepted,
                malformed=sum(malformed.values()),
                malformed_by_reason=malformed,
                lost=self._lost,
                out_of_order=self._out_of_order,
                restarts=self._restarts,
                dropped=self._dropped,
                processed=self._processed,
                buffered=len(self._buffer),
                buffered_bytes=self._buffered_bytes,
                last_datagram_time=self._last_time,
                rcvbuf=None if self._receiver is None else self._receiver.rcvbuf,
            )

    def reset_counters(self, *, clear_buffer: bool = False) -> None:
        """Zero the counters and forget the last readout id.

        Records still in the buffer are kept unless ``clear_buffer`` is true;
        kept records count as received after the reset (``datagrams``,
        ``bytes`` and ``accepted``), so that the invariants hold.
        """
        with self._lock:
            if clear_buffer:
                self._buffer = []
                self._buffered_bytes = 0
            self._zero_counters()
            self._datagrams = self._accepted = len(self._buffer)
            self._bytes = self._buffered_bytes
            self._reset_ids = True

    # -- the buffer ---------------------------------------------------------------

    def drain(self, max_records: int | None = None) -> list[bytes]:
        """Remove and return buffered records (raw ``bytes``), oldest first.

        Parameters
        ----------
        max_records : int, optional
            Return at most this many (default: all).
        """
        with self._lock:
            buffer = self._buffer
            if max_records is None or max_records >= len(buffer):
                self._buffer = []
                self._buffered_bytes = 0
                out = buffer
            elif max_records <= 0:
                return []
            else:
                out = buffer[:max_records]
                del buffer[:max_records]
                self._buffered_bytes -= sum(map(len, out))
            self._processed += len(out)
        return out

    def drain_readouts(self, max_records: int | None = None) -> list[AbstractAstroPixReadout]:
        """Like :meth:`drain`, as ``readout_class`` objects."""
        from_bytes = self.readout_class.from_bytes
        return [from_bytes(record) for record in self.drain(max_records)]

    # -- life cycle -----------------------------------------------------------------

    def open(self) -> Listener:
        """Create and bind the socket (if not done) and clear the stop flag.

        Raises
        ------
        InvalidAddressError, AddressInUseError, OSError
            From :class:`~astropix_nbmonitor.sock.MulticastReceiver`, in the
            calling thread.
        """
        with self._control:
            if self._receiver is None or self._receiver.closed:
                self._receiver = MulticastReceiver(
                    self.readout_class,
                    self.group,
                    self.port,
                    rcvbuf=self.rcvbuf_request,
                    timeout=None,
                    interface=self.interface,
                )
                if self.port == 0:
                    self.port = self._receiver.port
            self._stop_requested = False
            self._close_when_done = False
        return self

    def request_stop(self) -> None:
        """Ask the loop to end; it does within ``timeout`` seconds."""
        self._stop_requested = True

    @property
    def running(self) -> bool:
        """True while the receive loop runs (on its thread or in :meth:`run`)."""
        return not self._run_done.is_set()

    def start(self) -> Listener:
        """Open the socket and run the loop on a daemon thread; harmless if running.

        Returns the listener. Binding errors are raised here, in the caller's thread.
        """
        with self._control:
            if self._thread is not None and self._thread.is_alive():
                return self
            self.open()
            self._run_done.clear()  # running from now on, even before the thread is scheduled
            thread = threading.Thread(target=self._thread_main, name=self.THREAD_NAME, daemon=True)
            self._thread = thread
            try:
                thread.start()
            except BaseException:
                self._run_done.set()
                self._thread = None
                raise
        return self

    def _thread_main(self) -> None:
        try:
            self.run()
        except Exception:  # pragma: no cover - run() only raises on misuse
            logger.exception("listener on %s:%d ended with an error", self.group, self.port)

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the loop, join its thread and close the socket; harmless if stopped.

        Returns True when everything stopped within ``timeout`` seconds. If the
        loop was run with :meth:`run` in another thread and does not end in
        time, its socket is closed when it ends.
        """
        with self._control:
            self.request_stop()
            deadline = time.monotonic() + timeout
            thread, self._thread = self._thread, None
            if thread is not None:
                thread.join(timeout)
            done = self._run_done.wait(max(0.0, deadline - time.monotonic()))
            with self._loop_lock:
                if self._looping:
                    self._close_when_done = True
                    done = False
                else:
                    self._close()
            if not done:
                logger.warning(
                    "listener on %s:%d did not stop within %.1f s; its socket is closed when it does",
                    self.group,
                    self.port,
                    timeout,
                )
            return done

    def _close(self) -> None:
        receiver = self._receiver
        if receiver is not None:
            receiver.close()

    def close(self) -> None:
        """Same as :meth:`stop`."""
        self.stop()

    def address(self) -> tuple[str, int]:
        """``(group, port)``; the port actually bound once opened."""
        receiver = self._receiver
        if receiver is not None:
            return receiver.address()
        return self.group, self.port

    def exposure(self) -> str:
        """Who can send to this listener, in one sentence (see :func:`~astropix_nbmonitor.sock.describe_exposure`)."""
        receiver = self._receiver
        if receiver is not None:
            return receiver.exposure()
        return describe_exposure(self.group, self.interface)

    def __enter__(self) -> Listener:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}(group={self.group!r}, port={self.port}, {state})"

    # -- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        """Receive until :meth:`request_stop`, in the calling thread.

        Call :meth:`open` first (or use :meth:`start`).

        Raises
        ------
        RuntimeError
            If the socket is not open.
        """
        with self._loop_lock:
            receiver = self._receiver
            if receiver is None or receiver.closed:
                msg = f"listener on {self.group}:{self.port} is not open: call open() before run()"
                raise RuntimeError(msg)
            if self._looping:
                msg = f"listener on {self.group}:{self.port} is already running"
                raise RuntimeError(msg)
            self._looping = True
            self._run_done.clear()
        try:
            self._loop(receiver.socket)
        finally:
            with self._loop_lock:
                self._looping = False
                self._run_done.set()
                if self._close_when_done:
                    self._close_when_done = False
                    self._close()

    def _loop(self, sock: socket.socket) -> None:
        # The socket is in blocking mode without a timeout: a receive with
        # MSG_DONTWAIT is one system call (a socket timeout would add a poll()
        # before every receive), and poll() waits, with the time limit, only
        # when the socket is empty. recv() rather than recv_into() a buffer:
        # the record must become a bytes object anyway, and recv() builds it
        # without a second copy (measured about 5 % faster per datagram).
        # The batched path (recvmmsg) takes up to _BURST datagrams in one
        # system call into preallocated slots, checks each in place, and
        # copies out only the valid records.
        batcher = self._batcher()
        if batcher is not None:
            recvmmsg = batcher.function
            msgs = batcher.msgs
            view = batcher.view
            lengths = batcher.lengths
            flags = batcher.flags
            offsets = batcher.offsets
            n_slots = batcher.count
            fileno = sock.fileno
            get_errno = ctypes.get_errno
            retry = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
            truncated = _MSG_TRUNC
            slot = _SLOT
        recv = sock.recv
        dontwait = socket.MSG_DONTWAIT
        size = MAX_DATAGRAM_SIZE
        unpack = _RECORD_STRUCT.unpack_from
        magic = RECORD_HEADER
        header_size = RECORD_HEADER_SIZE
        ids = self._ids
        track = ids.track
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        wait_ms = max(1, round(self.timeout * 1000))
        bursts = range(_BURST)
        batch: list[bytes] = []
        append = batch.append
        expect = -1  # next expected id; -1: no baseline yet
        ids.reset()
        while not self._stop_requested:
            events = poller.poll(wait_ms)
            if not events:
                continue
            if events[0][1] & select.POLLNVAL:
                logger.warning("socket of listener on %s:%d was closed under it", self.group, self.port)
                break
            if self._reset_ids:
                self._reset_ids = False
                expect = -1
                ids.reset()
            n_short = n_header = n_length = n_other = bad_bytes = 0
            socket_error: OSError | None = None
            if batcher is not None:
                fd = fileno()
                if fd < 0:
                    logger.warning("socket of listener on %s:%d was closed under it", self.group, self.port)
                    break
                got = recvmmsg(fd, msgs, n_slots, dontwait, None)
                if got < 0:
                    err = get_errno()
                    if err == errno.ENOSYS:
                        logger.info("listener on %s:%d: recvmmsg unavailable, using recv()", self.group, self.port)
                        batcher = None
                        self.batch_receive = False
                        continue
                    if err not in retry:
                        socket_error = OSError(err, os.strerror(err))
                    got = 0
                for off, n in zip(offsets, lengths[:got].tolist()):
                    # The same checks as the recv() path below, on the slot in place.
                    try:
                        if n < header_size:
                            n_short += 1
                            bad_bytes += n
                            continue
                        head, rid, _timestamp, length = unpack(view, off)
                        if head != magic:
                            n_header += 1
                            bad_bytes += n
                            continue
                        if length != n - header_size or (n >= slot and flags[off // slot] & truncated):
                            n_length += 1
                            bad_bytes += n
                            continue
                        if rid == expect:
                            expect += 1
                        else:
                            expect = track(rid, expect)
                        append(view[off : off + n].tobytes())
                    except Exception:
                        n_other += 1
                        bad_bytes += n
            else:
                for _ in bursts:
                    try:
                        data = recv(size, dontwait)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        socket_error = exc
                        break
                    n = len(data)
                    try:
                        if n < header_size:
                            n_short += 1
                            bad_bytes += n
                            continue
                        head, rid, _timestamp, length = unpack(data)
                        if head != magic:
                            n_header += 1
                            bad_bytes += n
                            continue
                        if length != n - header_size:
                            n_length += 1
                            bad_bytes += n
                            continue
                        if rid == expect:
                            expect += 1
                        else:
                            expect = track(rid, expect)
                        append(data)
                    except Exception:
                        n_other += 1
                        bad_bytes += n
            # Counted here rather than per datagram: fewer operations on the fast path.
            n_bad = n_short + n_header + n_length + n_other
            if batch or n_bad:
                good_bytes = sum(map(len, batch))
                self._publish(batch, good_bytes, bad_bytes, (n_short, n_header, n_length, n_other))
                batch.clear()
            if socket_error is not None and self._socket_error(socket_error):
                break

    def _batcher(self) -> _BatchReceiver | None:
        """The recvmmsg slots when :attr:`batch_receive` (made once), else None."""
        if not self.batch_receive:
            return None
        if self._batch_receiver is None:
            try:
                self._batch_receiver = _BatchReceiver(_BURST)
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("listener on %s:%d: cannot use recvmmsg (%s), using recv()", self.group, self.port, exc)
                self.batch_receive = False
                return None
        return self._batch_receiver

    def _publish(self, batch: list[bytes], good_bytes: int, bad_bytes: int, bad: tuple[int, int, int, int]) -> None:
        """Hand a burst's records (of ``good_bytes`` bytes in all) and counts over, in one step."""
        now = time.time()
        n_bad = bad[0] + bad[1] + bad[2] + bad[3]
        n_datagrams = len(batch) + n_bad
        n_bytes = good_bytes + bad_bytes
        lost, out_of_order, restarts = self._ids.take()
        summary = ""
        with self._lock:
            self._datagrams += n_datagrams
            self._bytes += n_bytes
            if n_bad:
                malformed = self._malformed
                for key, count in zip(MALFORMED_REASONS, bad):
                    malformed[key] += count
                if now >= self._next_log:
                    summary = ", ".join(f"{k} {v}" for k, v in malformed.items() if v)
            n = len(batch)
            if n:
                self._accepted += n
                buffer = self._buffer
                space = self.buffer_size - len(buffer)
                room = self.buffer_bytes - self._buffered_bytes
                if n <= space and good_bytes <= room:
                    buffer.extend(batch)
                    self._buffered_bytes += good_bytes
                else:
                    # Keep the longest head of the burst that fits both bounds.
                    kept = kept_bytes = 0
                    for record in batch[: max(space, 0)]:
                        if kept_bytes + len(record) > room:
                            break
                        kept += 1
                        kept_bytes += len(record)
                    buffer.extend(batch[:kept])
                    self._buffered_bytes += kept_bytes
                    self._dropped += n - kept
            # A late readout filling a gap counted before reset_counters() could
            # take lost below zero: clamp.
            self._lost = max(0, self._lost + lost)
            self._out_of_order += out_of_order
            self._restarts += restarts
            self._last_time = now
        if (n_bad or restarts) and now >= self._next_log:
            self._next_log = now + _LOG_INTERVAL
            if summary:
                logger.warning("listener on %s:%d: malformed datagrams so far: %s", self.group, self.port, summary)
            if restarts:
                logger.info("listener on %s:%d: readout ids went back: DAQ restart", self.group, self.port)

    def _socket_error(self, exc: OSError) -> bool:
        """Log a receive error (rate-limited); True if the loop must end."""
        receiver = self._receiver
        fatal = self._stop_requested or receiver is None or receiver.closed
        now = time.time()
        if not fatal and now >= self._next_log:
            self._next_log = now + _LOG_INTERVAL
            logger.warning("listener on %s:%d: receive error: %s", self.group, self.port, exc)
        if not fatal:
            time.sleep(min(self.timeout, 0.01))  # never spin on a persistent error
        return fatal


class IdTracker:
    """Follows readout ids by the rules of this module's documentation.

    The listener's loop calls :meth:`track` only for an id that is not the
    expected one (the fast path is ``expect += 1``); :meth:`follow` does the
    whole walk for a list of ids (a replay). ``lost``, ``out_of_order`` and
    ``restarts`` accumulate until :meth:`take` hands them over.
    """

    __slots__ = ("gaps", "lost", "out_of_order", "restarts")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the gaps and the pending counts."""
        self.gaps: list[list[int]] = []
        self.lost = self.out_of_order = self.restarts = 0

    def take(self) -> tuple[int, int, int]:
        """The pending ``(lost, out_of_order, restarts)``, zeroed."""
        counts = (self.lost, self.out_of_order, self.restarts)
        self.lost = self.out_of_order = self.restarts = 0
        return counts

    def follow(self, ids: Iterable[int], expect: int = -1) -> int:
        """Follow ``ids`` in order from ``expect``; return the next expected id."""
        for rid in ids:
            expect = expect + 1 if rid == expect else self.track(rid, expect)
        return expect

    def track(self, rid: int, expect: int) -> int:
        """Follow an id that is not ``expect`` (the next expected one, -1 before any); return the next expected id."""
        if expect < 0:
            return rid + 1
        last = expect - 1
        if rid > last:
            if rid - last > RESTART_FORWARD_JUMP:
                self.restarts += 1
                self.gaps = []
                return rid + 1
            self.lost += rid - expect
            gaps = self.gaps
            gaps.append([expect, rid - 1])
            if len(gaps) > _GAP_MEMORY:
                del gaps[0]
            return rid + 1
        gaps = self.gaps
        for i in range(len(gaps) - 1, -1, -1):
            first, end = gaps[i]
            if first <= rid <= end:
                self.lost -= 1
                self.out_of_order += 1
                if first == end:
                    del gaps[i]
                elif rid == first:
                    gaps[i][0] = rid + 1
                elif rid == end:
                    gaps[i][1] = rid - 1
                else:
                    gaps[i][1] = rid - 1
                    gaps.insert(i + 1, [rid + 1, end])
                    if len(gaps) > _GAP_MEMORY:
                        del gaps[0]
                return expect
        if rid < RESTART_ID_LIMIT or last - rid > RESTART_BACKWARD_JUMP:
            self.restarts += 1
            self.gaps = []
            return rid + 1
        self.out_of_order += 1
        return expect
