"""The listener: a thread that receives readout records into a bounded buffer.

The listener owns the receiving socket (:class:`~astropix_nbmonitor.sock.MulticastReceiver`).
Its loop takes every datagram, checks that it is a readout record
(docs/format.md section 1, the framing of :mod:`~astropix_nbmonitor.record`,
the same checks in the same order as
:func:`~astropix_nbmonitor.record.record_problem`), follows the readout ids,
and keeps valid records, as raw ``bytes``, in a buffer of bounded size that
the consumer empties with :meth:`Listener.drain`. Nothing in the loop can be
stopped by its input: malformed datagrams are counted by reason, never raised.
A well-formed record whose data is larger than ``max_data_bytes`` (no board
buffer is that large) is counted as *oversize* and not kept.

Records read by other means (a replay of a file) go through the same checks
and counters with :meth:`Listener.ingest`, which returns the records to
process instead of buffering them.

Counters (:meth:`Listener.stats`) are consistent snapshots: the loop receives
a burst of datagrams (until the socket is empty, or at most a few hundred),
then publishes the burst's records and counts in one step, under the lock
that :meth:`Listener.drain` and :meth:`Listener.stats` take. So at any time::

    datagrams == accepted + malformed + oversize
    accepted == processed + dropped + buffered

Readout ids
-----------
The first readout received after the listener is made (or after
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

Oversize records are real readouts: their ids follow these rules like the
others (an oversize record fills its place in the sequence, it is not lost).

The expected id is kept when the loop stops (:meth:`Listener.stop`, then
:meth:`Listener.start` or :meth:`Listener.open` again): the first readout
after the pause that steps forward, by at most 2**24 ids, counts its gap as
``missed_while_stopped`` (not ``lost``: the monitor was told to stop). A
first readout that goes back, or jumps forward beyond 2**24, follows the
rules above (a restart, a late or a repeated readout). So, for a DAQ that
sends ``n`` readouts with consecutive ids, no restart and no duplicate, once
everything sent was received::

    n == accepted + oversize + lost + missed_while_stopped
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
import sys
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, NamedTuple

from .fmt import AbstractAstroPixReadout, AstroPix4Readout
from .record import (
    DEFAULT_MAX_DATA_BYTES,
    MALFORMED_REASONS,
    RECORD_HEADER_SIZE,
    RECORD_MAGIC,
    RECORD_STRUCT,
    record_problem,
)
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
    "DEFAULT_MAX_DATA_BYTES",
    "IdTracker",
    "MALFORMED_REASONS",
    "RESTART_BACKWARD_JUMP",
    "RESTART_FORWARD_JUMP",
    "RESTART_ID_LIMIT",
    "Listener",
    "ListenerStats",
]

logger = logging.getLogger(__name__)

# MALFORMED_REASONS (re-exported from record): the keys of
# ListenerStats.malformed_by_reason, the reasons of
# record.MalformedReadoutError plus "other" for a datagram whose handling
# failed unexpectedly (always 0 unless a bug).

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
#: Default of ``Listener(coalesce=...)``: after a small burst that emptied the
#: socket, the loop lets datagrams gather this long (s) before it receives
#: again, so that a slow stream wakes it (and the consumer it signals) a few
#: hundred times a second rather than once a datagram.
DEFAULT_COALESCE_S = 0.004
#: The loop only pauses after a burst of fewer datagrams than this (and than
#: an eighth of what the granted socket buffer holds): a faster stream is
#: received without pauses.
_COALESCE_BELOW = _BURST
#: Most bursts taken from the socket after a stop was asked (what was sent before it).
_FINAL_BURSTS = 16
#: Bytes of socket buffer a small datagram takes (the kernel's accounting,
#: header and bookkeeping included), to bound the pause by the buffer granted.
_DATAGRAM_TRUESIZE = 1024
#: Most records :meth:`Listener.ingest` checks while holding the id lock (the
#: loop waits meanwhile).
_INGEST_CHUNK = 4096
#: Least interval between two log messages about bad input (s).
_LOG_INTERVAL = 10.0
#: The data bound when ``max_data_bytes`` is 0 or None: larger than any record.
_NO_DATA_LIMIT = sys.maxsize
#: The expectation handed to :meth:`IdTracker.track` for the first readout
#: after a pause (see :meth:`IdTracker.pause`); -1 means no baseline yet.
_RESUMING = -2

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

    Every datagram is counted once, as accepted, malformed or oversize, and
    every accepted record once, as processed, dropped or buffered::

        datagrams == accepted + malformed + oversize
        accepted == processed + dropped + buffered

    Records given to :meth:`Listener.ingest` count like datagrams; those it
    returns count as ``processed`` at once (they are never buffered). The
    readout ids, oversize records included, follow the module's rules, so
    that, for a stream of ``n`` consecutive ids with no restart or duplicate,
    ``n == accepted + oversize + lost + missed_while_stopped`` once all was
    received.

    Attributes
    ----------
    datagrams, bytes : int
        Datagrams and bytes received (and records given to :meth:`Listener.ingest`).
    accepted : int
        Datagrams that are valid readout records with at most
        ``max_data_bytes`` of data: the ones delivered (or dropped).
    malformed : int
        Datagrams that are not readout records.
    malformed_by_reason : dict
        ``malformed`` split by reason (:data:`MALFORMED_REASONS`).
    lost : int
        Readouts missing from gaps in the readout ids while receiving.
    out_of_order : int
        Readouts whose id went back a little or repeated (reordered, duplicated).
    restarts : int
        DAQ restarts seen in the ids (see the module documentation).
    dropped : int
        Valid records dropped because the buffer was full, or discarded
        (:meth:`Listener.discard_buffer`).
    processed : int
        Records handed out by :meth:`Listener.drain` or returned by
        :meth:`Listener.ingest`.
    buffered : int
        Records in the buffer now.
    buffered_bytes : int
        Their bytes (bounded by :attr:`Listener.buffer_bytes`).
    last_datagram_time : float or None
        ``time.time()`` when the last datagram was received (or the
        ``received_at`` of the last :meth:`Listener.ingest` given one), None
        before any.
    rcvbuf : int or None
        The socket receive buffer the kernel reported (None before ``open()``).
    oversize : int
        Well-formed records whose data is larger than
        :attr:`Listener.max_data_bytes`: counted, their ids followed, but not
        kept (neither buffered nor returned, so never plotted).
    missed_while_stopped : int
        Readouts sent while the listener was stopped: the forward gap in the
        ids at the first readout after a restart of the loop (not in ``lost``).
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
    oversize: int = 0
    missed_while_stopped: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dictionary."""
        out = dataclasses.asdict(self)
        out["malformed_by_reason"] = dict(self.malformed_by_reason)
        return out


class _Burst(NamedTuple):
    """What one burst of datagrams (or one chunk of ingested records) gave."""

    #: The accepted records, in order.
    records: list[bytes]
    #: Malformed counts by reason, in the order of MALFORMED_REASONS.
    bad: tuple[int, int, int, int]
    #: Oversize records.
    oversize: int
    #: Bytes of the datagrams not kept (malformed and oversize).
    other_bytes: int
    #: A receive error that ended the burst, if any.
    error: OSError | None = None


def _record_fate(record: bytes, data_limit: int) -> str | None:
    """Why ``record`` is not kept (a malformed reason or ``"oversize"``), or None if it is."""
    problem = record_problem(record)
    if problem is None and len(record) - RECORD_HEADER_SIZE > data_limit:
        return "oversize"
    return problem


class _WakeUp:
    """A descriptor that poll() sees readable once :meth:`set`: an eventfd (Linux), else a socket pair."""

    def __init__(self) -> None:
        self._event_fd: int | None = None
        self._pair: tuple[socket.socket, socket.socket] | None = None
        if hasattr(os, "eventfd"):
            self._event_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - not Linux
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self._pair = (reader, writer)

    def fileno(self) -> int:
        return self._event_fd if self._event_fd is not None else self._pair[0].fileno()

    def set(self) -> None:
        try:
            if self._event_fd is not None:
                os.eventfd_write(self._event_fd, 1)
            else:  # pragma: no cover - not Linux
                self._pair[1].send(b"\0")
        except OSError:  # full: it is readable already
            pass

    def close(self) -> None:
        if self._event_fd is not None:
            os.close(self._event_fd)
            self._event_fd = None
        elif self._pair is not None:  # pragma: no cover - not Linux
            for end in self._pair:
                end.close()
            self._pair = None


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
        Longest idle wait of the loop (s); :meth:`request_stop` wakes it at
        once whatever this is (a wake-up socket is polled beside the UDP one).
    coalesce : float
        Seconds the loop lets datagrams gather after a small burst that
        emptied the socket (default :data:`DEFAULT_COALESCE_S`, 4 ms; 0: no
        pause). A slow stream is then received and handed over in a few
        hundred bursts a second instead of one per datagram, which is what
        keeps the CPU low at 1,000-10,000 readouts/s; it delays a datagram by
        at most this long. A fast stream (bursts of :data:`_COALESCE_BELOW`
        datagrams or more, or more than an eighth of what the socket buffer
        granted holds) is received without pauses. The attribute
        :attr:`coalesce` is read at every pause (a
        :class:`~astropix_nbmonitor.engine.MonitorEngine` lengthens it while
        its reads take the socket's datagrams themselves, see
        :meth:`receive_now`).
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
    max_data_bytes : int or None
        Largest data of a record kept (default
        :data:`~astropix_nbmonitor.record.DEFAULT_MAX_DATA_BYTES`, 4096 bytes,
        more than any board buffer): a well-formed record with more data is
        counted as ``oversize`` and not kept. 0 or None: no bound.

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
        timeout: float = 1.0,
        coalesce: float = DEFAULT_COALESCE_S,
        rcvbuf: int | None = DEFAULT_RCVBUF,
        interface: str | None = None,
        batch_receive: bool | None = None,
        max_data_bytes: int | None = DEFAULT_MAX_DATA_BYTES,
    ) -> None:
        for name, value in (("buffer_size", buffer_size), ("buffer_bytes", buffer_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"invalid {name} {value!r}: expected a positive integer"
                raise ValueError(msg)
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
            msg = f"invalid timeout {timeout!r}: expected a positive number of seconds"
            raise ValueError(msg)
        if not isinstance(coalesce, (int, float)) or isinstance(coalesce, bool) or not 0 <= coalesce < 1:
            msg = f"invalid coalesce {coalesce!r}: expected seconds, at least 0 and below 1"
            raise ValueError(msg)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            msg = f"invalid port {port!r}: expected an integer from 0 to 65535"
            raise ValueError(msg)
        if max_data_bytes is not None and (
            isinstance(max_data_bytes, bool) or not isinstance(max_data_bytes, int) or max_data_bytes < 0
        ):
            msg = f"invalid max_data_bytes {max_data_bytes!r}: expected a non-negative integer (0 or None: no bound)"
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
        self.coalesce = float(coalesce)
        self.rcvbuf_request = rcvbuf
        self.interface = interface
        #: Largest data of a record kept (bytes), None: no bound.
        self.max_data_bytes: int | None = max_data_bytes or None
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
        # The id tracker, the expected id and the pending counts: taken by the
        # loop for each burst, by ingest() for each chunk, by reset_counters().
        # Always taken before _lock, never inside it.
        self._ids_lock = threading.Lock()
        self._ids = IdTracker()
        self._expect = -1  # the next expected id; -1: no baseline yet
        self._buffer: list[bytes] = []
        self._buffered_bytes = 0
        # Set when at least _wake_at records are buffered (and by wake()): what
        # a consumer waits on (wait_for_records); _woken: wake() was called.
        self._records_ready = threading.Event()
        self._wake_at = 1
        self._woken = False
        # The loop's wake-up descriptor (made by each run of the loop, closed at
        # its end; request_stop() sets it so that poll() returns at once).
        self._wake_lock = threading.Lock()
        self._wake: _WakeUp | None = None
        #: How many times the loop returned from a wait (poll or pause): a
        #: measure of its wake-ups (the idle loop wakes once per ``timeout``).
        self.loop_wakeups = 0
        self._zero_counters()
        self._next_log = 0.0  # time.monotonic() of the next log message allowed

    # -- counters ---------------------------------------------------------------

    def _zero_counters(self) -> None:
        self._datagrams = 0
        self._bytes = 0
        self._accepted = 0
        self._malformed = dict.fromkeys(MALFORMED_REASONS, 0)
        self._oversize = 0
        self._lost = 0
        self._missed_while_stopped = 0
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
                oversize=self._oversize,
                missed_while_stopped=self._missed_while_stopped,
            )

    def reset_counters(self, *, clear_buffer: bool = False) -> None:
        """Zero the counters and forget the expected readout id.

        Records still in the buffer are kept unless ``clear_buffer`` is true;
        kept records count as received after the reset (``datagrams``,
        ``bytes`` and ``accepted``), so that the invariants hold. The next
        readout sets a new baseline (no loss, no missed readouts for it).
        """
        with self._ids_lock, self._lock:
            if clear_buffer:
                self._buffer = []
                self._buffered_bytes = 0
            self._zero_counters()
            self._datagrams = self._accepted = len(self._buffer)
            self._bytes = self._buffered_bytes
            self._ids.reset()
            self._expect = -1

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

    def discard_buffer(self) -> int:
        """Empty the buffer, counting what it held as ``dropped``; return that count.

        For a consumer that stops with a backlog it will not process (the
        invariant ``accepted == processed + dropped + buffered`` holds).
        """
        with self._lock:
            count = len(self._buffer)
            self._buffer = []
            self._buffered_bytes = 0
            self._dropped += count
        return count

    def wait_for_records(self, timeout: float | None = None, min_records: int = 1) -> bool:
        """Block until ``min_records`` are buffered, :meth:`wake` is called or ``timeout`` (s) passes.

        Returns True if at least ``min_records`` are buffered then. For a
        consumer thread that would otherwise poll :meth:`drain`: it calls this
        when a drain left the buffer empty, and sleeps until the loop buffers
        the next burst; with ``min_records`` above 1 it sleeps until that many
        have gathered (the loop does not wake it for each burst before). A
        :meth:`wake` made while nobody waits makes the next call return at once.
        """
        min_records = max(1, min(int(min_records), self.buffer_size))
        ready = self._records_ready
        with self._lock:
            wait = not self._woken and len(self._buffer) < min_records
            if wait:
                self._wake_at = min_records
                ready.clear()  # under the lock the loop sets it under: no burst is missed
        if wait:
            ready.wait(timeout)
        with self._lock:
            self._wake_at = 1
            self._woken = False
            return len(self._buffer) >= min_records

    def wake(self) -> None:
        """Make :meth:`wait_for_records` return now (a consumer being stopped)."""
        with self._lock:
            self._woken = True
        self._records_ready.set()

    def pending(self) -> int:
        """How many records are buffered, read without the lock (a hint: it may change at once)."""
        return len(self._buffer)

    # -- records from elsewhere --------------------------------------------------------

    def ingest(self, records: Iterable[bytes], *, received_at: float | None = None) -> list[bytes]:
        """Check and count ``records`` as if they had arrived as datagrams; return those to process.

        The same checks and counters as the loop's (``datagrams``, ``bytes``,
        malformed by reason, ``oversize``, the ids through the same
        :class:`IdTracker` and expected id, so ``lost``, ``out_of_order``,
        ``restarts``, ``missed_while_stopped``), but the accepted records are
        returned, in order, rather than buffered, and count as ``processed``
        at once: the caller processes them (nothing is dropped). For a replay
        that must be counted exactly as the live stream would be.

        Works on a listener that was never opened. On a running listener it
        is serialised with the loop: each chunk of :data:`_INGEST_CHUNK`
        records is checked under the lock the loop holds for each burst, so
        ingested records and datagrams follow the ids in one order and the
        invariants hold in every snapshot.

        Parameters
        ----------
        records : iterable of bytes-like
            Readout records (docs/format.md section 1), valid or not.
        received_at : float, optional
            ``time.time()`` to report as ``last_datagram_time``; by default
            that time is left as it is.

        Returns
        -------
        list of bytes
            The accepted records (as ``bytes``), in the given order.
        """
        records = list(records)
        kept: list[bytes] = []
        for first in range(0, len(records), _INGEST_CHUNK):
            with self._ids_lock:
                burst = self._check_records(records[first : first + _INGEST_CHUNK])
                self._publish(burst, received_at=received_at, buffered=False)
            kept.extend(burst.records)
        return kept

    def _check_records(self, records: list[bytes]) -> _Burst:
        """Check records one by one (not the receive path); hold ``_ids_lock``."""
        data_limit = self.max_data_bytes or _NO_DATA_LIMIT
        kept: list[bytes] = []
        bad = dict.fromkeys(MALFORMED_REASONS, 0)
        oversize = other_bytes = 0
        expect = self._expect
        track = self._ids.track
        for record in records:
            try:
                fate = _record_fate(record, data_limit)
                if fate is None or fate == "oversize":
                    rid = RECORD_STRUCT.unpack_from(record)[1]
                    expect = expect + 1 if rid == expect else track(rid, expect)
                if fate is None:
                    kept.append(bytes(record))
                    continue
            except Exception:
                fate = "other"
            if fate == "oversize":
                oversize += 1
            else:
                bad[fate] += 1
            other_bytes += len(record) if isinstance(record, (bytes, bytearray, memoryview)) else 0
        self._expect = expect
        return _Burst(kept, tuple(bad.values()), oversize, other_bytes)  # type: ignore[arg-type]

    # -- life cycle -----------------------------------------------------------------

    def open(self) -> Listener:
        """Create and bind the socket (if not done) and clear the stop flag.

        The expected readout id is kept from an earlier run: the gap at the
        first readout after it counts as ``missed_while_stopped`` (see the
        module documentation); :meth:`reset_counters` forgets it.

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
        """Ask the loop to end; a waiting loop wakes at once and ends."""
        self._stop_requested = True
        with self._wake_lock:  # the loop closes its wake-up under this lock: never a stale descriptor
            if self._wake is not None:
                self._wake.set()

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
        """Receive bursts until asked to stop; the expected id is kept for the next run.

        The socket is in blocking mode without a timeout: a receive with
        MSG_DONTWAIT is one system call (a socket timeout would add a poll()
        before every receive), and poll() waits, with the time limit, only
        when the socket is empty. poll() also watches a wake-up socket that
        :meth:`request_stop` writes to, so a long idle wait never delays a
        stop. After a small burst that emptied the socket, the loop pauses
        ``coalesce`` seconds (watching only the wake-up socket) so that the
        next datagrams arrive together (see the ``coalesce`` parameter).
        """
        wake = _WakeUp()  # before reading fd: a close of sock cannot hand its number to the wake-up
        try:
            fd = sock.fileno()
            if fd < 0:  # closed under the loop before it began
                self._warn_closed()
                return
            with self._wake_lock:
                self._wake = wake
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.register(wake.fileno(), select.POLLIN)
            pauser = select.poll()
            pauser.register(wake.fileno(), select.POLLIN)
            wait_ms = max(1, round(self.timeout * 1000))
            pause_below = self._pause_below(sock)
            paused = False
            while not self._stop_requested:
                if not paused:  # after a pause the datagrams are there: receive without asking poll() first
                    readable = self._wait_readable(poller.poll, wait_ms, fd)
                    if readable is None:
                        return
                    if not readable:
                        continue
                got = self._receive_and_publish(sock)
                if got is None:
                    return
                pause_ms = round(self.coalesce * 1000)  # read each time: a consumer may change it while running
                paused = bool(pause_ms and 0 < got < pause_below and not self._stop_requested)
                if paused:
                    pauser.poll(pause_ms)  # the stop's wake-up ends the pause at once
                    self.loop_wakeups += 1
            self._receive_queued(sock)
        finally:
            with self._wake_lock:
                self._wake = None
                wake.close()
            self._pause_ids()

    def receive_now(self) -> int:
        """Receive, on the calling thread, what the socket holds now (no waiting); the datagrams received.

        The same checks, counting and buffering as the loop's (under the same
        lock, so in the same order): a consumer about to read calls it so
        that datagrams waiting in the socket during the loop's coalescing
        pause are buffered too. Does nothing (0) unless the loop runs; at
        most :data:`_FINAL_BURSTS` bursts.
        """
        if not self._looping or self._stop_requested:
            return 0
        with self._loop_lock:  # the socket is closed under this lock once the loop ended: never a stale descriptor
            receiver = self._receiver
            if not self._looping or self._stop_requested or receiver is None or receiver.closed:
                return 0
            total = 0
            for _ in range(_FINAL_BURSTS):
                got = self._receive_and_publish(receiver.socket)
                if not got:
                    break
                total += got
                if got < _BURST:
                    break
            return total

    def granted_datagrams(self) -> int:
        """About how many small datagrams the socket buffer the kernel granted holds (0 before :meth:`open`)."""
        receiver = self._receiver
        if receiver is None or receiver.closed:
            return 0
        try:
            granted = receiver.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except OSError:
            return 0
        return granted // _DATAGRAM_TRUESIZE

    def _receive_queued(self, sock: socket.socket) -> None:
        """On a stop: take what the socket already holds (at most :data:`_FINAL_BURSTS` bursts, no waiting).

        Datagrams sent before the stop are then received and processed, as
        when a stop found the loop about to receive them; what arrives later
        counts as missed while stopped.
        """
        for _ in range(_FINAL_BURSTS):
            got = self._receive_and_publish(sock)
            if not got or got < _BURST:
                return

    def _pause_below(self, sock: socket.socket) -> int:
        """Bursts smaller than this are followed by the coalescing pause.

        An eighth of the datagrams the socket buffer granted holds (so that a
        stream speeding up during a pause is not lost), at most
        :data:`_COALESCE_BELOW`.
        """
        try:
            granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except OSError:
            granted = 0
        return max(1, min(_COALESCE_BELOW, granted // _DATAGRAM_TRUESIZE // 8))

    def _wait_readable(
        self, poll: Callable[[int], list[tuple[int, int]]], wait_ms: int, fd: int | None = None
    ) -> bool | None:
        """Wait at most ``wait_ms`` for data: True if some, False if none (or woken), None if the socket is gone.

        ``fd``: the UDP socket's descriptor when the poll also watches the
        wake-up socket (whose event means a stop was asked).
        """
        events = poll(wait_ms)
        self.loop_wakeups += 1
        if not events:
            return False
        for event_fd, mask in events:
            if fd is not None and event_fd != fd:
                continue
            if mask & select.POLLNVAL:
                self._warn_closed()
                return None
            return True
        return False

    def _receive_and_publish(self, sock: socket.socket) -> int | None:
        """One burst: receive, check, publish; the datagrams received, or None if the loop must end."""
        with self._ids_lock:
            burst = self._receive_burst(sock)
            if burst is None:
                return None
            got = len(burst.records) + burst.oversize + sum(burst.bad)
            if got:
                self._publish(burst, received_at=time.time())
        if burst.error is not None and self._socket_error(burst.error):
            return None
        return got

    def _receive_burst(self, sock: socket.socket) -> _Burst | None:
        """A burst by the path in use (recvmmsg or recv); None if the socket was closed under the loop."""
        batcher = self._batcher()
        if batcher is None:
            return self._burst_recv(sock)
        fd = sock.fileno()
        if fd < 0:
            self._warn_closed()
            return None
        return self._burst_recvmmsg(batcher, fd)

    def _warn_closed(self) -> None:
        logger.warning("socket of listener on %s:%d was closed under it", self.group, self.port)

    def _pause_ids(self) -> None:
        """The loop ends: the next readout is the first after a pause (see :meth:`IdTracker.pause`)."""
        with self._ids_lock:
            self._expect = self._ids.pause(self._expect)

    # The two per-datagram loops below are the hot path; they check each
    # datagram inline, in the order of record.record_problem (short, magic,
    # length), then the id and the data bound. Measured (drain capacity, the
    # socket prefilled with 50,000 35-byte records, listener drained and not
    # decoded, median of 9 interleaved runs, 2 CPUs; bench_udp.py's fill and
    # consumer), a version that makes those checks one function call per
    # datagram reached 1,085k/s against 1,167k/s inline on the recvmmsg path
    # (-7%), and 802k/s against 829k/s on the recv path (-3%). So they stay
    # inline; everything else of the loop is in the named steps above.

    def _burst_recvmmsg(self, batcher: _BatchReceiver, fd: int) -> _Burst:
        """Receive up to :data:`_BURST` datagrams with one ``recvmmsg`` call; check each in its slot."""
        got = batcher.function(fd, batcher.msgs, batcher.count, socket.MSG_DONTWAIT, None)
        if got < 0:
            return self._recvmmsg_failed(ctypes.get_errno())
        view, flags, slot, truncated = batcher.view, batcher.flags, _SLOT, _MSG_TRUNC
        unpack, magic, header_size = RECORD_STRUCT.unpack_from, RECORD_MAGIC, RECORD_HEADER_SIZE
        data_limit = self.max_data_bytes or _NO_DATA_LIMIT
        expect, track = self._expect, self._ids.track
        records: list[bytes] = []
        append = records.append
        n_short = n_header = n_length = n_other = n_oversize = other_bytes = 0
        for off, n in zip(batcher.offsets, batcher.lengths[:got].tolist()):
            try:
                if n < header_size:
                    n_short += 1
                    other_bytes += n
                    continue
                head, rid, _timestamp, length = unpack(view, off)
                if head != magic:
                    n_header += 1
                    other_bytes += n
                    continue
                if length != n - header_size or (n >= slot and flags[off // slot] & truncated):
                    n_length += 1
                    other_bytes += n
                    continue
                if rid == expect:
                    expect += 1
                else:
                    expect = track(rid, expect)
                if length > data_limit:
                    n_oversize += 1
                    other_bytes += n
                    continue
                append(view[off : off + n].tobytes())
            except Exception:
                n_other += 1
                other_bytes += n
        self._expect = expect
        return _Burst(records, (n_short, n_header, n_length, n_other), n_oversize, other_bytes)

    def _recvmmsg_failed(self, err: int) -> _Burst:
        """An empty burst after ``recvmmsg`` failed with ``err``; ENOSYS switches to ``recv()``."""
        error = None
        if err == errno.ENOSYS:
            logger.info("listener on %s:%d: recvmmsg unavailable, using recv()", self.group, self.port)
            self.batch_receive = False
        elif err not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
            error = OSError(err, os.strerror(err))
        return _Burst([], (0, 0, 0, 0), 0, 0, error)

    def _burst_recv(self, sock: socket.socket) -> _Burst:
        """Receive up to :data:`_BURST` datagrams, one ``recv()`` each, until the socket is empty.

        ``recv()`` rather than ``recv_into()`` a buffer: the record must
        become a bytes object anyway, and ``recv()`` builds it without a
        second copy (measured about 5 % faster per datagram).
        """
        recv, dontwait, size = sock.recv, socket.MSG_DONTWAIT, MAX_DATAGRAM_SIZE
        unpack, magic, header_size = RECORD_STRUCT.unpack_from, RECORD_MAGIC, RECORD_HEADER_SIZE
        data_limit = self.max_data_bytes or _NO_DATA_LIMIT
        expect, track = self._expect, self._ids.track
        records: list[bytes] = []
        append = records.append
        n_short = n_header = n_length = n_other = n_oversize = other_bytes = 0
        error: OSError | None = None
        for _ in range(_BURST):
            try:
                data = recv(size, dontwait)
            except BlockingIOError:
                break
            except OSError as exc:
                error = exc
                break
            n = len(data)
            try:
                if n < header_size:
                    n_short += 1
                    other_bytes += n
                    continue
                head, rid, _timestamp, length = unpack(data)
                if head != magic:
                    n_header += 1
                    other_bytes += n
                    continue
                if length != n - header_size:
                    n_length += 1
                    other_bytes += n
                    continue
                if rid == expect:
                    expect += 1
                else:
                    expect = track(rid, expect)
                if length > data_limit:
                    n_oversize += 1
                    other_bytes += n
                    continue
                append(data)
            except Exception:
                n_other += 1
                other_bytes += n
        self._expect = expect
        return _Burst(records, (n_short, n_header, n_length, n_other), n_oversize, other_bytes, error)

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

    def _publish(self, burst: _Burst, *, received_at: float | None, buffered: bool = True) -> None:
        """Count a burst (or an ingested chunk) and hand its records over, in one step.

        ``buffered``: the records go into the buffer (the loop), else they
        count as processed at once (:meth:`ingest`). Hold ``_ids_lock``.
        """
        records = burst.records
        good_bytes = sum(map(len, records))
        lost, out_of_order, restarts = self._ids.take()
        missed = self._ids.take_missed()
        with self._lock:
            self._datagrams += len(records) + sum(burst.bad) + burst.oversize
            self._bytes += good_bytes + burst.other_bytes
            for key, count in zip(MALFORMED_REASONS, burst.bad):
                self._malformed[key] += count
            self._oversize += burst.oversize
            self._accepted += len(records)
            if buffered:
                self._keep(records, good_bytes)
            else:
                self._processed += len(records)
            # A late readout filling a gap counted before reset_counters() could
            # take lost below zero: clamp.
            self._lost = max(0, self._lost + lost)
            self._missed_while_stopped += missed
            self._out_of_order += out_of_order
            self._restarts += restarts
            if received_at is not None:
                self._last_time = received_at
            bad_input = burst.oversize or restarts or any(burst.bad)
            if bad_input:
                malformed, oversize = dict(self._malformed), self._oversize
        if bad_input:
            self._log_bad_input(malformed, oversize, restarts)

    def _keep(self, records: list[bytes], good_bytes: int) -> None:
        """Buffer the longest head of ``records`` that fits both bounds, count the rest dropped; hold ``_lock``."""
        n = len(records)
        buffer = self._buffer
        space = self.buffer_size - len(buffer)
        room = self.buffer_bytes - self._buffered_bytes
        if n <= space and good_bytes <= room:
            buffer.extend(records)
            self._buffered_bytes += good_bytes
            if n and len(buffer) >= self._wake_at:
                self._records_ready.set()
            return
        kept = kept_bytes = 0
        for record in records[: max(space, 0)]:
            if kept_bytes + len(record) > room:
                break
            kept += 1
            kept_bytes += len(record)
        buffer.extend(records[:kept])
        self._buffered_bytes += kept_bytes
        self._dropped += n - kept
        if n:  # the buffer is full: wake the consumer whatever it waits for
            self._records_ready.set()

    def _log_bad_input(self, malformed: dict[str, int], oversize: int, restarts: int) -> None:
        """Say what was wrong with the input so far, at most every :data:`_LOG_INTERVAL` seconds."""
        now = time.monotonic()
        if now < self._next_log:
            return
        self._next_log = now + _LOG_INTERVAL
        summary = ", ".join(f"{k} {v}" for k, v in malformed.items() if v)
        if summary:
            logger.warning("listener on %s:%d: malformed datagrams so far: %s", self.group, self.port, summary)
        if oversize:
            logger.warning(
                "listener on %s:%d: %d records so far with more than %s data bytes (oversize: counted, not kept)",
                self.group,
                self.port,
                oversize,
                self.max_data_bytes,
            )
        if restarts:
            logger.info("listener on %s:%d: readout ids went back: DAQ restart", self.group, self.port)

    def _socket_error(self, exc: OSError) -> bool:
        """Log a receive error (rate-limited); True if the loop must end."""
        receiver = self._receiver
        fatal = self._stop_requested or receiver is None or receiver.closed
        now = time.monotonic()
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
    ``restarts`` accumulate until :meth:`take` hands them over,
    ``missed_while_stopped`` until :meth:`take_missed` does.

    The expected id is the caller's: ``-1`` before any readout (the next one
    sets the baseline), :attr:`RESUMING` after :meth:`pause` (the next one is
    the first after a pause), else the next id in order.
    """

    #: The expected id that marks the first readout after :meth:`pause`.
    RESUMING = _RESUMING

    __slots__ = ("gaps", "lost", "missed_while_stopped", "out_of_order", "paused_expect", "restarts")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the gaps, the expectation held over a pause and the pending counts."""
        self.gaps: list[list[int]] = []
        self.lost = self.out_of_order = self.restarts = self.missed_while_stopped = 0
        self.paused_expect = -1

    def take(self) -> tuple[int, int, int]:
        """The pending ``(lost, out_of_order, restarts)``, zeroed."""
        counts = (self.lost, self.out_of_order, self.restarts)
        self.lost = self.out_of_order = self.restarts = 0
        return counts

    def take_missed(self) -> int:
        """The pending ``missed_while_stopped``, zeroed."""
        missed, self.missed_while_stopped = self.missed_while_stopped, 0
        return missed

    def pause(self, expect: int) -> int:
        """Receiving pauses with ``expect`` the next expected id; return the expectation to resume with.

        When ``expect`` is an id, it is held here and :attr:`RESUMING` is
        returned: given to :meth:`track` with the next id, that id's forward
        gap (up to :data:`RESTART_FORWARD_JUMP`) counts as
        ``missed_while_stopped``. Otherwise ``expect`` is returned as it is.
        """
        if expect < 0:
            return expect
        self.paused_expect = expect
        return _RESUMING

    def follow(self, ids: Iterable[int], expect: int = -1) -> int:
        """Follow ``ids`` in order from ``expect``; return the next expected id."""
        for rid in ids:
            expect = expect + 1 if rid == expect else self.track(rid, expect)
        return expect

    def track(self, rid: int, expect: int) -> int:
        """Follow an id that is not ``expect`` (the next expected one, see the class); return the next expected id."""
        if expect < 0:
            return self._resume(rid) if expect == _RESUMING else rid + 1
        last = expect - 1
        if rid > last:
            if rid - last > RESTART_FORWARD_JUMP:
                return self._restart(rid)
            self.lost += rid - expect
            self._remember_gap(expect, rid - 1)
            return rid + 1
        if self._fill_gap(rid):
            return expect
        if rid < RESTART_ID_LIMIT or last - rid > RESTART_BACKWARD_JUMP:
            return self._restart(rid)
        self.out_of_order += 1
        return expect

    def _resume(self, rid: int) -> int:
        """The first id after a pause: a forward step counts as missed, anything else follows the rules."""
        expect, self.paused_expect = self.paused_expect, -1
        if expect < 0:
            return rid + 1
        if expect <= rid and rid - expect < RESTART_FORWARD_JUMP:
            self.missed_while_stopped += rid - expect
            return rid + 1
        return self.track(rid, expect)

    def _restart(self, rid: int) -> int:
        self.restarts += 1
        self.gaps = []
        return rid + 1

    def _remember_gap(self, first: int, end: int) -> None:
        gaps = self.gaps
        gaps.append([first, end])
        if len(gaps) > _GAP_MEMORY:
            del gaps[0]

    def _fill_gap(self, rid: int) -> bool:
        """Take a late ``rid`` back from ``lost`` if it lies in a remembered gap; True if it did."""
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
                return True
        return False
