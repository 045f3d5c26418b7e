"""A monitor hub over ZeroMQ: one process receives and histograms, any number of viewers attach.

One :class:`~astropix_nbmonitor.engine.MonitorEngine` receives the UDP stream
and histograms it once; a :class:`HubPublisher` publishes its state over a
ZeroMQ PUB socket at every refresh, relays the records it processed, and takes
commands (reset, stop, start) on a second socket, only with its token. A
viewer (:class:`HubEngine`) subscribes to one or several hubs and offers the
interface a monitor widget reads from a ``MonitorEngine``, so a widget fed by
a hub is the same widget with another source.

Wire format (``SCHEMA`` 1). Every message is multipart: a topic frame, a JSON
header (UTF-8), then raw array frames. Nothing received is ever unpickled or
evaluated: headers are parsed with plain :func:`json.loads`, arrays are read
with :func:`numpy.frombuffer` in a whitelisted little-endian dtype, after
their size has been checked against the frame's length.

``[b"state", header, *arrays]``
    ``{"schema": 1, "kind": "state", "hub": {identity, started_at, address:
    [group, port], exposure, publish, command, refresh_interval, attach},
    "seq", "time", "running", "chips", "status": {name: value},
    "histograms": {name: UHI dict}, "rates": array ref}``. ``seq`` is the
    publisher's own sequence (1 for its first message after a start); the UHI
    dicts are :func:`boost_histogram.serialization.to_uhi` with every numpy
    array replaced by an *array ref*.
    A state may also hold ``"windows"``: the time windows' slots completed
    since the last state and the newest one (see :func:`_encode_window_block`
    and :class:`WindowBlock`); no slot with no hit, no unchanged newest slot,
    so an idle hub sends only the block's few numbers.
``[b"history", header, *arrays]`` (the reply to the ``"history"`` command)
    ``{"schema": 1, "kind": "history", "ok": true, "hub": identity, "seq",
    "windows": the whole ring, "pixel_totals": the whole run's per-pixel TOT
    spectra, sparse}`` (:func:`encode_history`); read with a larger element
    budget (:data:`MAX_HISTORY_ELEMENTS`) and the same checks.
``[b"records", header, lengths, data]``
    ``{"schema": 1, "kind": "records", "hub": identity, "seq", "count"}``;
    ``lengths`` is ``count`` uint32 (little-endian), ``data`` the records
    concatenated. ``seq`` is the batches' own sequence: it is taken when the
    engine hands the batch over, so a batch the publisher had to drop leaves a
    gap that viewers count.

An array ref is ``{"frame": i, "dtype": "<i8", "shape": [...]}``: the array is
frame ``i`` of the multipart message (topic 0, header 1, arrays from 2). A ref
may also hold ``"rows": [k, ...]``: the frame then holds only those slices
along the first axis, every other slice is zero. The encoder uses it when at
most half the slices are non-zero, which is what keeps one chip's state small:
the per-chip histograms have an axis of all 32 chip ids (143 kB of int64 for
the hit maps alone), and a one-chip run sends one slice of it.

Threads and sockets. One ``zmq.Context.instance()`` per process; each socket
is created, used and closed by one thread; every wait polls with a time limit
so the loops see their stop flags; sockets close with LINGER 0. The PUB socket
has a send high-water mark: a slow viewer loses messages (counted as missed
updates, from the sequence numbers) and never blocks the hub. Commands take
a fresh REQ socket per call, with a time limit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hmac
import json
import logging
import math
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import boost_histogram as bh
import numpy as np
import zmq
from boost_histogram.serialization import from_uhi, to_uhi

from .astropix4.layout import NUM_COLS, NUM_ROWS
from .engine import EngineState, MonitorEngine
from .fmt import AbstractAstroPixReadout, AstroPix4Readout, decoder_for
from .hist import TOT_EDGES, HitAccumulator
from .sock import AddressInUseError
from .status import STATUS_TABLE, Status
from .trend import RateTrend
from .windows import PIXEL_BUDGET_BYTES, PixelTots, SecondSlice, WindowedAccumulator

__all__ = [
    "DEFAULT_PUBLISH",
    "SCHEMA",
    "HubAddressInUseError",
    "HubBusyError",
    "HubCommandError",
    "HubEngine",
    "HubInfo",
    "HubLink",
    "HubMessageError",
    "HubPublisher",
    "HubState",
    "combine_states",
    "decode_records",
    "decode_state",
    "describe_hub_exposure",
    "encode_records",
    "encode_state",
    "request_command",
    "request_history",
    "WindowBlock",
    "decode_history",
    "encode_history",
]

logger = logging.getLogger(__name__)

#: Version of the wire format.
SCHEMA = 1
#: Topic frame of a state message.
STATE_TOPIC = b"state"
#: Topic frame of a record-batch message.
RECORDS_TOPIC = b"records"
#: Where a hub publishes by default (loopback: only this machine can attach).
DEFAULT_PUBLISH = "tcp://127.0.0.1:5557"
#: Topic frame of a history reply (on the command socket).
HISTORY_TOPIC = b"history"
#: The commands a hub takes ("ping" and "history" need no token: they change nothing).
COMMANDS = ("reset", "stop", "start", "ping", "history")
#: Most elements all the arrays of one history reply may have together (the
#: whole ring of 32 chips, 600 s, with a full per-pixel budget, has about 22 million).
MAX_HISTORY_ELEMENTS = 1 << 25
#: Most history replies a hub sends per second (to all viewers together);
#: beyond, it answers "busy" and the viewer asks again later.
MAX_HISTORY_PER_S = 20
#: Largest matrix side and most TOT edges a window block may describe.
_MAX_SIDE = 1024
_MAX_EDGES = 100_000
#: The only dtypes an array frame may have (little-endian numbers).
ARRAY_DTYPES = frozenset({"<i8", "<u8", "<f8", "<i4", "<u4", "<f4", "<i2", "<u2", "|i1", "|u1"})
#: Most elements one decoded array may have.
MAX_ARRAY_ELEMENTS = 1 << 22
#: Most elements all the arrays of one message may have together: a small
#: header with sparse refs ("rows": []) cannot make a viewer allocate more
#: (a one-chip state has about 22,000).
MAX_MESSAGE_ELEMENTS = 1 << 23
#: Largest message a viewer accepts (ZeroMQ drops the connection beyond it).
MAX_MESSAGE_BYTES = 1 << 28
#: Deepest nesting of a header that is walked for array refs.
_MAX_DEPTH = 32
#: The histograms every state message carries (those of ``EngineState.histograms``).
STATE_HISTOGRAMS = ("hit_map", "tot_hist", "chip_hit_map", "chip_tot_hist")
_AXIS_TYPES = frozenset({"regular", "variable", "category_int", "category_str", "boolean"})
_STORAGE_TYPES = frozenset({"int", "double", "weighted", "mean", "weighted_mean"})
_REF_KEYS = frozenset({"frame", "dtype", "shape", "rows"})


def _log_limited(count: int) -> bool:
    """Whether the ``count``-th occurrence of a repeated problem is logged (the first 5, then every 100th)."""
    return count <= 5 or count % 100 == 0


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class HubMessageError(ValueError):
    """A hub message (or command) that cannot be read: bad JSON, schema, keys, frames, sizes."""


class HubCommandError(RuntimeError):
    """A hub refused a command, or did not answer within the time limit."""


class HubBusyError(HubCommandError):
    """A hub answered "busy" to a history request (too many at once): ask again later."""


class HubAddressInUseError(AddressInUseError):
    """The TCP endpoint a hub should bind is taken (another hub, or another program).

    ``address`` is the endpoint asked for, ``port`` its TCP port.
    """


# --------------------------------------------------------------------------
# Hub identity and state
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HubInfo:
    """Who publishes: the ``hub`` block of every state message.

    Attributes
    ----------
    identity : str
        Random hex, new at every start of the publisher: a change means the
        hub restarted.
    started_at : float
        ``time.time()`` of that start.
    address : tuple of (str, int)
        The UDP address (group, port) the hub's engine receives.
    exposure : str
        Who can send data to the hub's engine (the engine's ``exposure()``).
    publish, command : str
        The endpoints the hub bound (as ZeroMQ reports them).
    refresh_interval : float
        Seconds between two state messages.
    attach : str
        Who can attach to the hub (:meth:`HubPublisher.exposure`).
    """

    identity: str
    started_at: float
    address: tuple[str, int]
    exposure: str
    publish: str
    command: str
    refresh_interval: float
    attach: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (``address`` as a list)."""
        out = dataclasses.asdict(self)
        out["address"] = [self.address[0], int(self.address[1])]
        return out

    @classmethod
    def from_dict(cls, data: Any) -> HubInfo:
        """Read a ``hub`` block; raises :class:`HubMessageError` on a missing or mistyped field."""
        if not isinstance(data, dict):
            msg = f"hub info is a {type(data).__name__}, not an object"
            raise HubMessageError(msg)
        address = _field(data, "address", list, "hub")
        if len(address) != 2 or not isinstance(address[0], str) or not _is_int(address[1]):
            msg = f"hub address must be [group, port], got {address!r}"
            raise HubMessageError(msg)
        refresh = _number(data, "refresh_interval", "hub")
        if not refresh > 0:
            msg = f"hub refresh_interval must be > 0, got {refresh!r}"
            raise HubMessageError(msg)
        attach = data.get("attach", "")
        return cls(
            identity=_field(data, "identity", str, "hub"),
            started_at=_number(data, "started_at", "hub"),
            address=(address[0], int(address[1])),
            exposure=_field(data, "exposure", str, "hub"),
            publish=_field(data, "publish", str, "hub"),
            command=_field(data, "command", str, "hub"),
            refresh_interval=float(refresh),
            attach=attach if isinstance(attach, str) else "",
        )


@dataclasses.dataclass(frozen=True)
class HubState(EngineState):
    """An engine state as a viewer received it from a hub.

    Everything of :class:`~astropix_nbmonitor.engine.EngineState` (``seq``
    is the hub's publish sequence, or for several hubs the viewer's count of
    combinations), plus:

    Attributes
    ----------
    hub : HubInfo
        Who published it.
    received_at : float
        The viewer's ``time.time()`` when it arrived.
    """

    hub: HubInfo
    received_at: float
    #: The time windows' slots the hub sent with this state (None: none, or an older hub).
    windows: WindowBlock | None = None


@dataclasses.dataclass(frozen=True)
class WindowBlock:
    """The time-window part of a hub's state message (or of a history reply).

    Attributes
    ----------
    generation : int
        The hub's :attr:`WindowedAccumulator.generation` (it goes up at every
        reset of the hub: a viewer clears its windows).
    head : int or None
        The hub's newest slot number (None before any hit).
    now : float
        The hub engine's clock when the slots were read: a viewer's windows end there.
    granularity, max_seconds : float
        Seconds per slot, and the longest window.
    num_rows, num_cols : int
        The matrix.
    tot_edges : numpy.ndarray
        The TOT bin edges (us).
    slices : tuple of SecondSlice
        The slots sent: those completed since the last state plus the newest
        (``complete=False``), only those with hits; every slot of the ring in a
        history reply.
    """

    generation: int
    head: int | None
    now: float
    granularity: float
    max_seconds: float
    num_rows: int
    num_cols: int
    tot_edges: np.ndarray
    slices: tuple[SecondSlice, ...] = ()

    @property
    def layout(self) -> tuple[Any, ...]:
        """What a viewer's accumulators are built from (a change rebuilds them)."""
        return (self.granularity, self.max_seconds, self.num_rows, self.num_cols, tuple(float(e) for e in self.tot_edges))


# --------------------------------------------------------------------------
# Wire format: encoding
# --------------------------------------------------------------------------


def _array_ref(array: np.ndarray, frames: list[bytes]) -> dict[str, Any]:
    """Append ``array`` (or its non-zero slices) to ``frames`` and return its ref (frame index: +2)."""
    arr = np.asarray(array)
    if arr.dtype.str not in ARRAY_DTYPES:
        arr = arr.astype(arr.dtype.newbyteorder("<"))
        if arr.dtype.str not in ARRAY_DTYPES:
            msg = f"cannot send an array of dtype {array.dtype} (allowed: {sorted(ARRAY_DTYPES)})"
            raise TypeError(msg)
    ref: dict[str, Any] = {"frame": len(frames) + 2, "dtype": arr.dtype.str, "shape": [int(n) for n in arr.shape]}
    if arr.ndim >= 2 and arr.shape[0] > 1:
        nonzero = np.flatnonzero(arr.reshape(arr.shape[0], -1).any(axis=1))
        if 2 * len(nonzero) <= arr.shape[0]:
            ref["rows"] = [int(k) for k in nonzero]
            arr = arr[nonzero]
    frames.append(np.ascontiguousarray(arr).tobytes())
    return ref


def _with_refs(obj: Any, frames: list[bytes]) -> Any:
    """``obj`` (a ``to_uhi`` dict) with every numpy array replaced by an array ref."""
    if isinstance(obj, np.ndarray):
        return _array_ref(obj, frames)
    if isinstance(obj, dict):
        return {str(k): _with_refs(v, frames) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_with_refs(v, frames) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _status_values(status: Status) -> dict[str, Any]:
    """A status as JSON values (numpy scalars made plain)."""
    return {name: value.item() if isinstance(value, np.generic) else value for name, value in status.as_dict().items()}


def encode_state(state: EngineState, hub: HubInfo, seq: int, windows: WindowBlock | None = None) -> list[bytes]:
    """A state message: ``[b"state", header, *array frames]`` (see the module's docstring).

    Parameters
    ----------
    state : EngineState
        What to publish (``MonitorEngine.state()``); every histogram of
        ``state.histograms`` travels.
    hub : HubInfo
        The publisher's identity block.
    seq : int
        The publisher's sequence number of this message.
    windows : WindowBlock, optional
        The time windows' slots to send with it (the ``"windows"`` block).
    """
    frames: list[bytes] = []
    histograms = {name: _with_refs(to_uhi(h), frames) for name, h in state.histograms.items()}
    rates = _array_ref(np.asarray(state.rates, dtype=np.float64), frames)
    header = {
        "schema": SCHEMA,
        "kind": "state",
        "hub": hub.as_dict(),
        "seq": int(seq),
        "time": float(state.time),
        "running": bool(state.running),
        "chips": [int(c) for c in state.chips],
        "status": _status_values(state.status),
        "histograms": histograms,
        "rates": rates,
    }
    if windows is not None:
        header["windows"] = _encode_window_block(windows, frames)
    return [STATE_TOPIC, json.dumps(header, separators=(",", ":")).encode("utf-8"), *frames]


def _index_dtype(num_rows: int, num_cols: int, num_edges: int) -> str:
    """The dtype of flat per-pixel TOT indices (``pixel * (bins + 2) + bin``) of this layout."""
    return "<u2" if num_rows * num_cols * (num_edges + 1) <= 1 << 16 else "<u4"


def _encode_window_block(block: WindowBlock, frames: list[bytes]) -> dict[str, Any]:
    """The ``"windows"`` header block of ``block``, its arrays appended to ``frames``.

    ``{generation, head, now, granularity, max_seconds, num_rows, num_cols,
    tot_edges}`` and, when there are slices, the array refs ``keys`` (int64
    ``(E, 3)``: second, chip, complete), ``maps`` (int32 ``(B, cells)``: the hit
    maps of the B slices without per-pixel counts only; the others' are the
    sums of their per-pixel counts over the TOT bins),
    ``tots`` (int32 ``(E, bins + 2)``), ``pixel_lengths`` (int64 ``(E,)``, -1:
    not kept), ``pixel_index`` (uint16/uint32) and ``pixel_count`` (uint16
    when every count fits, else uint32),
    the sparse per-pixel counts of every slice one after the other.
    """
    out: dict[str, Any] = {
        "generation": int(block.generation),
        "head": None if block.head is None else int(block.head),
        "now": float(block.now),
        "granularity": float(block.granularity),
        "max_seconds": float(block.max_seconds),
        "num_rows": int(block.num_rows),
        "num_cols": int(block.num_cols),
        "tot_edges": _array_ref(np.asarray(block.tot_edges, dtype="<f8"), frames),
    }
    slices = block.slices
    if not slices:
        return out
    index_dtype = _index_dtype(block.num_rows, block.num_cols, len(block.tot_edges))
    kept = [sl for sl in slices if sl.pixel_index is not None and sl.pixel_count is not None]
    out["keys"] = _array_ref(np.array([[sl.second, sl.chip, int(sl.complete)] for sl in slices], dtype="<i8"), frames)
    # A slice's hit map is the sum of its per-pixel TOT counts over the bins: sent only for slices without them.
    bare = [sl.maps for sl in slices if sl.pixel_index is None or sl.pixel_count is None]
    cells = block.num_rows * block.num_cols
    out["maps"] = _array_ref(np.stack(bare).astype("<i4") if bare else np.zeros((0, cells), "<i4"), frames)
    out["tots"] = _array_ref(np.stack([sl.tots for sl in slices]).astype("<i4"), frames)
    lengths = [len(sl.pixel_index) if sl.pixel_index is not None and sl.pixel_count is not None else -1 for sl in slices]
    out["pixel_lengths"] = _array_ref(np.array(lengths, dtype="<i8"), frames)
    index = np.concatenate([sl.pixel_index for sl in kept]) if kept else np.zeros(0)
    count = np.concatenate([sl.pixel_count for sl in kept]) if kept else np.zeros(0)
    out["pixel_index"] = _array_ref(index.astype(index_dtype), frames)
    # Counts of one (pixel, bin) in one second: uint16 when they fit (almost always), else uint32.
    out["pixel_count"] = _array_ref(count.astype("<u2" if not len(count) or int(count.max()) < 1 << 16 else "<u4"), frames)
    return out


def encode_history(
    block: WindowBlock,
    totals: Sequence[tuple[int, np.ndarray, np.ndarray]],
    hub_identity: str,
    seq: int,
    trend: np.ndarray | None = None,
) -> list[bytes]:
    """A history reply: ``[b"history", header, *arrays]`` (the command socket's answer to ``"history"``).

    The header: ``{"schema", "kind": "history", "ok": true, "hub": identity,
    "seq": the last state published before it, "windows": the whole ring
    (a window block), "pixel_totals": {"chips", "lengths", "index", "count"}}``:
    the whole run's per-pixel TOT spectra, sparse (int64 counts), and
    ``"trend"``: the whole run's rate trend, float64 ``(3, n)`` (time,
    readouts/s, hits/s: the points of the hub's ``RateTrend``).
    """
    frames: list[bytes] = []
    windows = _encode_window_block(block, frames)
    index_dtype = _index_dtype(block.num_rows, block.num_cols, len(block.tot_edges))
    chips = np.array([c for c, _, _ in totals], dtype="<i8")
    lengths = np.array([len(i) for _, i, _ in totals], dtype="<i8")
    index = np.concatenate([i for _, i, _ in totals]) if totals else np.zeros(0)
    count = np.concatenate([n for _, _, n in totals]) if totals else np.zeros(0)
    header = {
        "schema": SCHEMA,
        "kind": "history",
        "ok": True,
        "hub": str(hub_identity),
        "seq": int(seq),
        "windows": windows,
        "pixel_totals": {
            "chips": _array_ref(chips, frames),
            "lengths": _array_ref(lengths, frames),
            "index": _array_ref(index.astype(index_dtype), frames),
            "count": _array_ref(count.astype("<i8"), frames),
        },
    }
    if trend is not None:
        header["trend"] = _array_ref(np.asarray(trend, dtype="<f8").reshape(3, -1), frames)
    return [HISTORY_TOPIC, json.dumps(header, separators=(",", ":")).encode("utf-8"), *frames]


def encode_records(records: Sequence[bytes], hub_identity: str, seq: int) -> list[bytes]:
    """A record-batch message: ``[b"records", header, lengths (uint32 LE), data]``."""
    lengths = np.fromiter((len(r) for r in records), dtype="<u4", count=len(records))
    header = {"schema": SCHEMA, "kind": "records", "hub": str(hub_identity), "seq": int(seq), "count": len(records)}
    return [RECORDS_TOPIC, json.dumps(header, separators=(",", ":")).encode("utf-8"), lengths.tobytes(), b"".join(records)]


# --------------------------------------------------------------------------
# Wire format: decoding (everything here distrusts its input)
# --------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``data[key]``, checked to be of ``kind``."""
    if key not in data:
        msg = f"{where}: missing key {key!r}"
        raise HubMessageError(msg)
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        msg = f"{where}: {key!r} is a {type(value).__name__}, expected {getattr(kind, '__name__', kind)}"
        raise HubMessageError(msg)
    return value


def _number(data: dict[str, Any], key: str, where: str) -> float:
    value = _field(data, key, (int, float), where)
    if isinstance(value, bool) or not math.isfinite(value):
        msg = f"{where}: {key!r} must be a finite number, got {value!r}"
        raise HubMessageError(msg)
    return float(value)


def _frame_bytes(frame: Any) -> bytes:
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return bytes(frame)
    buffer = getattr(frame, "bytes", None)  # a zmq.Frame
    if isinstance(buffer, bytes):
        return buffer
    msg = f"a message frame is a {type(frame).__name__}, not bytes"
    raise HubMessageError(msg)


def _read_header(frames: Sequence[Any], topic: bytes, kind: str) -> tuple[dict[str, Any], list[bytes]]:
    """Check the topic, parse the JSON header, check schema and kind; return it and the frames as bytes."""
    if not isinstance(frames, (list, tuple)) or len(frames) < 2:
        msg = f"a {kind} message needs at least 2 frames (topic, header), got {len(frames) if isinstance(frames, (list, tuple)) else type(frames).__name__}"
        raise HubMessageError(msg)
    raw = [_frame_bytes(f) for f in frames]
    if raw[0] != topic:
        msg = f"topic {raw[0][:32]!r} is not {topic!r}"
        raise HubMessageError(msg)
    try:
        header = json.loads(raw[1].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        msg = f"{kind} header is not JSON: {exc}"
        raise HubMessageError(msg) from None
    if not isinstance(header, dict):
        msg = f"{kind} header is a {type(header).__name__}, not an object"
        raise HubMessageError(msg)
    schema = header.get("schema")
    if schema != SCHEMA or not _is_int(schema):
        msg = f"unknown schema {schema!r} (this viewer reads schema {SCHEMA})"
        raise HubMessageError(msg)
    if header.get("kind") != kind:
        msg = f"header kind {header.get('kind')!r} is not {kind!r}"
        raise HubMessageError(msg)
    return header, raw


def _is_ref(obj: Any) -> bool:
    return isinstance(obj, dict) and {"frame", "dtype", "shape"} <= obj.keys() <= _REF_KEYS


class _Frames:
    """The frames of one message being decoded, and the elements its arrays may still allocate."""

    def __init__(self, raw: list[bytes], budget: int | None = None) -> None:
        self.raw = raw
        self.limit = MAX_MESSAGE_ELEMENTS if budget is None else int(budget)
        self.budget = self.limit

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int) -> bytes:
        return self.raw[index]

    def spend(self, elements: int) -> None:
        """Count ``elements`` against the message's budget."""
        self.budget -= elements
        if self.budget < 0:
            msg = f"the message's arrays have more than {self.limit} elements in all"
            raise HubMessageError(msg)


def _array_from_ref(ref: dict[str, Any], frames: _Frames) -> np.ndarray:
    """The array an array ref points to, its size checked against the frame before use."""
    index, dtype, shape = ref["frame"], ref["dtype"], ref["shape"]
    if not _is_int(index) or not 2 <= index < len(frames):
        msg = f"array frame {index!r} out of range (the message has frames 2..{len(frames) - 1})"
        raise HubMessageError(msg)
    if not isinstance(dtype, str) or dtype not in ARRAY_DTYPES:
        msg = f"array dtype {dtype!r} not allowed (allowed: {', '.join(sorted(ARRAY_DTYPES))})"
        raise HubMessageError(msg)
    if not isinstance(shape, list) or not shape or len(shape) > 8 or not all(_is_int(n) and n >= 0 for n in shape):
        msg = f"array shape {shape!r} is not a list of 1 to 8 sizes"
        raise HubMessageError(msg)
    size = math.prod(shape)
    if size > MAX_ARRAY_ELEMENTS:
        msg = f"array of shape {shape} has more than {MAX_ARRAY_ELEMENTS} elements"
        raise HubMessageError(msg)
    frames.spend(size)
    rows = ref.get("rows")
    kept = _check_rows(rows, shape[0]) if rows is not None else None
    np_dtype = np.dtype(dtype)
    sent_shape = shape if kept is None else [len(kept), *shape[1:]]
    expected = math.prod(sent_shape) * np_dtype.itemsize
    frame = frames[index]
    if len(frame) != expected:
        msg = f"array frame {index} holds {len(frame)} bytes, shape {sent_shape} of {dtype} needs {expected}"
        raise HubMessageError(msg)
    data = np.frombuffer(frame, dtype=np_dtype).reshape(sent_shape)
    if kept is None:
        return data.copy()
    full = np.zeros(shape, dtype=np_dtype)
    full[kept] = data
    return full


def _check_rows(rows: Any, first: int) -> list[int]:
    if not isinstance(rows, list) or not all(_is_int(k) and 0 <= k < first for k in rows):
        msg = f"array rows {rows!r} are not indices below {first}"
        raise HubMessageError(msg)
    if any(b <= a for a, b in zip(rows, rows[1:])):
        msg = f"array rows {rows!r} are not strictly increasing"
        raise HubMessageError(msg)
    return rows


def _restore_arrays(obj: Any, frames: _Frames, depth: int = 0) -> Any:
    """``obj`` with every array ref replaced by its array."""
    if depth > _MAX_DEPTH:
        msg = f"header nested deeper than {_MAX_DEPTH} levels"
        raise HubMessageError(msg)
    if _is_ref(obj):
        return _array_from_ref(obj, frames)
    if isinstance(obj, dict):
        return {k: _restore_arrays(v, frames, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore_arrays(v, frames, depth + 1) for v in obj]
    return obj


def _axis_extent(axis: Any, where: str) -> int:
    """Bins of a UHI axis, flow bins included (what its storage needs)."""
    if not isinstance(axis, dict) or axis.get("type") not in _AXIS_TYPES:
        kind = axis.get("type") if isinstance(axis, dict) else type(axis).__name__
        msg = f"{where}: axis type {kind!r} not known (known: {', '.join(sorted(_AXIS_TYPES))})"
        raise HubMessageError(msg)
    kind = axis["type"]
    if kind == "boolean":
        return 2
    if kind == "regular":
        bins = _field(axis, "bins", int, where)
        flows = bool(axis.get("underflow")) + bool(axis.get("overflow"))
        if bins < 1:
            msg = f"{where}: a regular axis needs bins >= 1, got {bins}"
            raise HubMessageError(msg)
        return bins + flows
    if kind == "variable":
        edges = _field(axis, "edges", np.ndarray, where)
        if edges.ndim != 1 or len(edges) < 2:
            msg = f"{where}: a variable axis needs at least 2 edges"
            raise HubMessageError(msg)
        return len(edges) - 1 + bool(axis.get("underflow")) + bool(axis.get("overflow"))
    categories = _field(axis, "categories", list, where)
    return len(categories) + bool(axis.get("flow"))


def _histogram(uhi: Any, frames: _Frames, name: str) -> bh.Histogram:
    """One histogram from its UHI dict: arrays restored, sizes checked, then ``from_uhi``."""
    where = f"histogram {name!r}"
    if not isinstance(uhi, dict):
        msg = f"{where} is a {type(uhi).__name__}, not a UHI object"
        raise HubMessageError(msg)
    data = _restore_arrays(uhi, frames)
    axes = _field(data, "axes", list, where)
    storage = _field(data, "storage", dict, where)
    if not 1 <= len(axes) <= 8:
        msg = f"{where}: {len(axes)} axes (1 to 8 allowed)"
        raise HubMessageError(msg)
    if storage.get("type") not in _STORAGE_TYPES:
        msg = f"{where}: storage type {storage.get('type')!r} not known"
        raise HubMessageError(msg)
    shape = tuple(_axis_extent(axis, where) for axis in axes)
    arrays = [v for v in storage.values() if isinstance(v, np.ndarray)]
    if not arrays or any(a.shape != shape for a in arrays):
        msg = f"{where}: storage arrays {[a.shape for a in arrays]} do not match the axes' {shape}"
        raise HubMessageError(msg)
    try:
        return from_uhi(data)
    except Exception as exc:  # from_uhi's own checks: report them as a malformed message
        msg = f"{where}: not a valid UHI histogram: {type(exc).__name__}: {exc}"
        raise HubMessageError(msg) from None


def _status_from(values: Any, taken_at: float) -> Status:
    if not isinstance(values, dict) or not all(isinstance(k, str) for k in values):
        msg = "status must be an object of counter name -> value"
        raise HubMessageError(msg)
    for name, value in values.items():
        if value is not None and not isinstance(value, (int, float)):
            msg = f"status {name!r} is a {type(value).__name__}, not a number"
            raise HubMessageError(msg)
    return Status.from_dict(values, taken_at=taken_at)


def decode_state(frames: Sequence[Any], received_at: float | None = None) -> HubState:
    """Read a state message (the reverse of :func:`encode_state`).

    Parameters
    ----------
    frames : sequence of bytes
        The multipart message as received.
    received_at : float, optional
        When it arrived (default ``time.time()`` now).

    Raises
    ------
    HubMessageError
        On anything malformed: not JSON, unknown schema, missing or mistyped
        keys, an array frame out of range, a dtype not whitelisted, an array
        size that does not match its frame, histogram axes that do not match
        their storage.
    """
    received_at = time.time() if received_at is None else float(received_at)
    header, raw_frames = _read_header(frames, STATE_TOPIC, "state")
    raw = _Frames(raw_frames)
    hub = HubInfo.from_dict(_field(header, "hub", dict, "state"))
    seq = _field(header, "seq", int, "state")
    when = _number(header, "time", "state")
    running = _field(header, "running", bool, "state")
    chips = _field(header, "chips", list, "state")
    if not all(_is_int(c) for c in chips):
        msg = f"state chips {chips!r} are not integers"
        raise HubMessageError(msg)
    status = _status_from(_field(header, "status", dict, "state"), when)
    given = _field(header, "histograms", dict, "state")
    missing = [name for name in STATE_HISTOGRAMS if name not in given]
    if missing:
        msg = f"state: missing histograms {missing}"
        raise HubMessageError(msg)
    histograms = {name: _histogram(uhi, raw, name) for name, uhi in given.items()}
    rates_ref = _field(header, "rates", dict, "state")
    if not _is_ref(rates_ref):
        msg = "state: 'rates' is not an array ref"
        raise HubMessageError(msg)
    rates = _array_from_ref(rates_ref, raw)
    if rates.ndim != 2 or rates.shape[0] != 3 or rates.dtype.kind != "f":
        msg = f"state: rates must be a (3, n) float array, got {rates.shape} {rates.dtype}"
        raise HubMessageError(msg)
    windows = None
    if "windows" in header:
        windows = _decode_window_block(_field(header, "windows", dict, "state"), raw, "state windows")
    return HubState(
        seq=seq,
        time=when,
        status=status,
        histograms=histograms,
        chips=tuple(int(c) for c in chips),
        rates=rates,
        running=running,
        hub=hub,
        received_at=received_at,
        windows=windows,
    )


def _ref_array(block: dict[str, Any], key: str, frames: _Frames, where: str, dtypes: Sequence[str], ndim: int) -> np.ndarray:
    """The array of ref ``block[key]``, checked to be of one of ``dtypes`` and ``ndim`` dimensions."""
    ref = _field(block, key, dict, where)
    if not _is_ref(ref):
        msg = f"{where}: {key!r} is not an array ref"
        raise HubMessageError(msg)
    arr = _array_from_ref(ref, frames)
    if arr.dtype.str not in dtypes or arr.ndim != ndim:
        msg = f"{where}: {key!r} must be {ndim}-dimensional {' or '.join(dtypes)}, got {arr.shape} {arr.dtype.str}"
        raise HubMessageError(msg)
    return arr


def _int_field(block: dict[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = _field(block, key, int, where)
    if not low <= value <= high:
        msg = f"{where}: {key!r} = {value} is not in {low}..{high}"
        raise HubMessageError(msg)
    return value


def _decode_window_block(block: dict[str, Any], frames: _Frames, where: str) -> WindowBlock:
    """A window block, every field, shape and index checked (the reverse of :func:`_encode_window_block`)."""
    generation = _int_field(block, "generation", where, 0, 1 << 62)
    head = block.get("head")
    if head is not None and not (_is_int(head) and abs(head) < 1 << 62):
        msg = f"{where}: 'head' must be an integer (below 2**62) or null, got {head!r}"
        raise HubMessageError(msg)
    now = _number(block, "now", where)
    granularity = _number(block, "granularity", where)
    max_seconds = _number(block, "max_seconds", where)
    if not (granularity > 0 and granularity <= max_seconds and max_seconds / granularity <= 1 << 20):
        msg = f"{where}: granularity {granularity!r} and max_seconds {max_seconds!r} do not make a ring"
        raise HubMessageError(msg)
    num_rows = _int_field(block, "num_rows", where, 1, _MAX_SIDE)
    num_cols = _int_field(block, "num_cols", where, 1, _MAX_SIDE)
    edges = _ref_array(block, "tot_edges", frames, where, ("<f8",), 1)
    if not 2 <= len(edges) <= _MAX_EDGES or not np.all(np.isfinite(edges)) or not np.all(np.diff(edges) > 0):
        msg = f"{where}: tot_edges must be 2 to {_MAX_EDGES} increasing finite edges"
        raise HubMessageError(msg)
    out = WindowBlock(generation, head, now, granularity, max_seconds, num_rows, num_cols, edges)
    if "keys" not in block:
        return out
    cells, nbins = num_rows * num_cols, len(edges) + 1
    keys = _ref_array(block, "keys", frames, where, ("<i8",), 2)
    count = len(keys)
    maps = _ref_array(block, "maps", frames, where, ("<i4",), 2)
    tots = _ref_array(block, "tots", frames, where, ("<i4",), 2)
    lengths = _ref_array(block, "pixel_lengths", frames, where, ("<i8",), 1)
    index_dtype = _index_dtype(num_rows, num_cols, len(edges))
    index = _ref_array(block, "pixel_index", frames, where, (index_dtype,), 1)
    counts = _ref_array(block, "pixel_count", frames, where, ("<u2", "<u4"), 1).astype("<u4")
    bare = int(np.count_nonzero(lengths < 0))
    if keys.shape[1:] != (3,) or maps.shape != (bare, cells) or tots.shape != (count, nbins) or lengths.shape != (count,):
        msg = f"{where}: slice arrays of shapes {keys.shape} {maps.shape} {tots.shape} {lengths.shape} do not match {count} slices"
        raise HubMessageError(msg)
    if (maps < 0).any() or (tots < 0).any():
        msg = f"{where}: negative counts"
        raise HubMessageError(msg)
    seconds, chips, complete = keys[:, 0], keys[:, 1], keys[:, 2]
    if (chips < 0).any() or (chips >= 32).any() or not np.isin(complete, (0, 1)).all():
        msg = f"{where}: slice keys must hold chip_ids 0..31 and complete 0/1"
        raise HubMessageError(msg)
    if head is not None and (seconds > head).any():
        msg = f"{where}: a slice is newer than the head {head}"
        raise HubMessageError(msg)
    if (lengths < -1).any() or int(lengths[lengths > 0].sum()) != len(index) or len(index) != len(counts):
        msg = f"{where}: pixel lengths {int(lengths[lengths > 0].sum())} do not match {len(index)} indices and {len(counts)} counts"
        raise HubMessageError(msg)
    if len(index) and int(index.max()) >= cells * nbins:
        msg = f"{where}: a per-pixel index is beyond {cells} x {nbins}"
        raise HubMessageError(msg)
    slices = []
    start = 0
    bare_rows = iter(maps)
    for k in range(count):
        idx = cnt = None
        if lengths[k] >= 0:
            end = start + int(lengths[k])
            idx, cnt = index[start:end], counts[start:end]
            if len(idx) > 1 and not np.all(np.diff(idx.astype(np.int64)) > 0):
                msg = f"{where}: the per-pixel indices of a slice are not strictly increasing"
                raise HubMessageError(msg)
            start = end
            hit_map = np.bincount(idx.astype(np.intp) // nbins, weights=cnt, minlength=cells).astype("<i4")
            if int(cnt.sum(dtype=np.int64)) > int(tots[k].sum(dtype=np.int64)):
                msg = f"{where}: a slice's per-pixel counts exceed its TOT counts"
                raise HubMessageError(msg)
        else:
            hit_map = next(bare_rows)
        slices.append(SecondSlice(int(seconds[k]), int(chips[k]), hit_map, tots[k], idx, cnt, bool(complete[k])))
    return dataclasses.replace(out, slices=tuple(slices))


@dataclasses.dataclass(frozen=True)
class HubHistory:
    """A hub's history reply: its whole ring and whole-run per-pixel spectra (see :func:`encode_history`)."""

    hub: str
    seq: int
    windows: WindowBlock
    pixel_totals: tuple[tuple[int, np.ndarray, np.ndarray], ...]
    trend: np.ndarray | None = None


def decode_history(frames: Sequence[Any]) -> HubHistory:
    """Read a history reply; raises :class:`HubMessageError` on anything malformed or over its budget.

    Every array is checked as a state's are (whitelisted dtypes, sizes
    against the frames), within :data:`MAX_HISTORY_ELEMENTS` for the whole reply.
    """
    header, raw_frames = _read_header(frames, HISTORY_TOPIC, "history")
    raw = _Frames(raw_frames, MAX_HISTORY_ELEMENTS)  # read at call time (tests lower it)
    if header.get("ok") is not True:
        msg = f"history refused: {str(header.get('error', 'no reason given'))[:200]}"
        raise HubMessageError(msg)
    identity = _field(header, "hub", str, "history")
    seq = _int_field(header, "seq", "history", 0, 1 << 62)
    windows = _decode_window_block(_field(header, "windows", dict, "history"), raw, "history windows")
    totals_block = _field(header, "pixel_totals", dict, "history")
    chips = _ref_array(totals_block, "chips", raw, "history pixel_totals", ("<i8",), 1)
    lengths = _ref_array(totals_block, "lengths", raw, "history pixel_totals", ("<i8",), 1)
    index_dtype = _index_dtype(windows.num_rows, windows.num_cols, len(windows.tot_edges))
    index = _ref_array(totals_block, "index", raw, "history pixel_totals", (index_dtype,), 1)
    counts = _ref_array(totals_block, "count", raw, "history pixel_totals", ("<i8",), 1)
    flat = windows.num_rows * windows.num_cols * (len(windows.tot_edges) + 1)
    if len(chips) != len(lengths) or (lengths < 0).any() or int(lengths.sum()) != len(index) or len(index) != len(counts):
        msg = "history pixel_totals: chips, lengths, indices and counts do not match"
        raise HubMessageError(msg)
    if (chips < 0).any() or (chips >= 32).any() or len(set(chips.tolist())) != len(chips) or (counts < 0).any():
        msg = "history pixel_totals: chip_ids must be distinct in 0..31 and counts >= 0"
        raise HubMessageError(msg)
    if len(index) and int(index.max()) >= flat:
        msg = f"history pixel_totals: an index is beyond {flat}"
        raise HubMessageError(msg)
    totals = []
    start = 0
    for chip, n in zip(chips.tolist(), lengths.tolist()):
        idx = index[start : start + n]
        if len(idx) > 1 and not np.all(np.diff(idx.astype(np.int64)) > 0):
            msg = "history pixel_totals: indices are not strictly increasing"
            raise HubMessageError(msg)
        totals.append((int(chip), idx, counts[start : start + n]))
        start += n
    trend = None
    if "trend" in header:
        trend = _ref_array(header, "trend", raw, "history", ("<f8",), 2)
        if trend.shape[0] != 3 or trend.shape[1] > 1 << 16 or not np.all(np.isfinite(trend)):
            msg = f"history trend must be (3, n <= 65536) finite float64, got {trend.shape}"
            raise HubMessageError(msg)
    return HubHistory(identity, seq, windows, tuple(totals), trend)


def decode_records(frames: Sequence[Any]) -> tuple[dict[str, Any], list[bytes]]:
    """Read a record-batch message: its header and the records, in order.

    Raises
    ------
    HubMessageError
        On a malformed header, a lengths frame that is not ``count`` uint32,
        or lengths that do not sum to the data frame's size.
    """
    header, raw = _read_header(frames, RECORDS_TOPIC, "records")
    if len(raw) != 4:
        msg = f"a records message has 4 frames (topic, header, lengths, data), got {len(raw)}"
        raise HubMessageError(msg)
    _field(header, "hub", str, "records")
    seq = _field(header, "seq", int, "records")
    count = _field(header, "count", int, "records")
    if count < 0 or seq < 0:
        msg = f"records: count {count} and seq {seq} must be >= 0"
        raise HubMessageError(msg)
    lengths_frame, data = raw[2], raw[3]
    if len(lengths_frame) != 4 * count:
        msg = f"records: the lengths frame holds {len(lengths_frame)} bytes, {count} uint32 need {4 * count}"
        raise HubMessageError(msg)
    lengths = np.frombuffer(lengths_frame, dtype="<u4").astype(np.int64)
    total = int(lengths.sum())
    if total != len(data):
        msg = f"records: lengths sum to {total} bytes, the data frame holds {len(data)}"
        raise HubMessageError(msg)
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends[:-1]]
    return header, [data[a:b] for a, b in zip(starts, ends)]


# --------------------------------------------------------------------------
# Combining several hubs
# --------------------------------------------------------------------------


_KINDS = {c.name: c.kind for c in STATUS_TABLE}


def _combine_values(name: str, values: list[Any]) -> Any:
    """One counter over several hubs: counts and rates summed, durations and times the largest."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    kind = _KINDS.get(name, "count")
    if kind in ("seconds", "time"):
        return max(present)
    if all(isinstance(v, (int, float)) for v in present):
        total = sum(present)
        return int(total) if kind == "count" and all(_is_int(v) for v in present) else total
    return present[0]


def _combine_status(statuses: Sequence[Status], taken_at: float) -> Status:
    names: dict[str, None] = {}
    for status in statuses:
        names.update(dict.fromkeys(status))
    values = {name: _combine_values(name, [s.get(name) for s in statuses]) for name in names}
    return Status.from_dict(values, taken_at=taken_at)


def _combine_rates(rates: Sequence[np.ndarray]) -> np.ndarray:
    """Rate histories summed point by point over their common (most recent) length; times of the first."""
    n = min(r.shape[1] for r in rates)
    out = np.array(rates[0][:, rates[0].shape[1] - n :], dtype=np.float64)
    for r in rates[1:]:
        out[1:] += r[1:, r.shape[1] - n :]
    return out


def combine_states(states: Sequence[HubState], seq: int) -> HubState:
    """The sum of several hubs' states (one hub per DAQ host).

    Histograms are added (they must have the same axes, else ``ValueError``);
    counters that are counts or rates are summed, ``uptime`` and
    ``last_datagram`` are the largest; ``chips`` is the union; the rate
    history is summed over the most recent points all hubs have, on the first
    hub's times; ``running`` is True if any hub runs; ``hub`` is the first
    hub's; ``seq`` is given (the viewer's count of combinations).
    """
    if not states:
        msg = "combine_states needs at least one state"
        raise ValueError(msg)
    first = states[0]
    histograms = {}
    for name, hist in first.histograms.items():
        total = hist.copy()
        for other in states[1:]:
            total = total + other.histograms[name]
        histograms[name] = total
    when = max(s.time for s in states)
    return HubState(
        seq=int(seq),
        time=when,
        status=_combine_status([s.status for s in states], when),
        histograms=histograms,
        chips=tuple(sorted({c for s in states for c in s.chips})),
        rates=_combine_rates([s.rates for s in states]),
        running=any(s.running for s in states),
        hub=first.hub,
        received_at=max(s.received_at for s in states),
    )


# --------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------


def _split_tcp(url: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``tcp://host:port`` URL; None for another transport or no numeric port."""
    if not url.startswith("tcp://"):
        return None
    host, sep, port = url[len("tcp://") :].rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host, int(port)


def _check_url(url: Any, what: str) -> str:
    if not isinstance(url, str) or not url.startswith(("tcp://", "ipc://", "inproc://")):
        msg = f"{what} {url!r} is not a ZeroMQ endpoint such as {DEFAULT_PUBLISH!r} (tcp://, ipc:// or inproc://)"
        raise ValueError(msg)
    if url.startswith("tcp://") and _split_tcp(url) is None:
        msg = f"{what} {url!r} has no port: write tcp://HOST:PORT, e.g. {DEFAULT_PUBLISH!r}"
        raise ValueError(msg)
    return url


def _default_command(publish: str) -> str:
    """The command endpoint beside ``publish``: the same host, port + 1 (0 stays 0: zmq chooses)."""
    tcp = _split_tcp(publish)
    if tcp is not None:
        host, port = tcp
        return f"tcp://{host}:{port + 1 if port else 0}"
    return f"{publish}-command"


def describe_hub_exposure(url: str) -> str:
    """Who can attach to a hub bound at ``url``, in one sentence."""
    tcp = _split_tcp(url)
    if tcp is None:
        if url.startswith("ipc://"):
            return f"local socket file ({url}): only processes of this machine allowed to open it can attach"
        return f"in-process ({url}): only this process can attach"
    host = tcp[0].strip("[]")
    if host in ("localhost", "::1") or host.startswith("127."):
        return f"loopback only ({url}): only this machine can attach"
    if host in ("*", "0.0.0.0", "::"):
        return f"all interfaces ({url}): any host that reaches this machine can attach; commands need the token"
    return f"interface {host} ({url}): any host that reaches {host} can attach; commands need the token"


def _bind(socket: zmq.Socket, url: str) -> str:
    """Bind ``socket`` at ``url``; return the endpoint bound (port 0 read back); clear errors."""
    try:
        socket.bind(url)
    except zmq.ZMQError as exc:
        tcp = _split_tcp(url)
        if exc.errno == errno.EADDRINUSE:
            msg = f"{url}: address already in use (another hub? choose another --publish/--command port)"
            raise HubAddressInUseError(msg, address=url, port=tcp[1] if tcp else 0) from None
        msg = f"cannot bind {url}: {exc}"
        raise OSError(exc.errno, msg) from None
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


def _close(socket: zmq.Socket | None) -> None:
    if socket is not None:
        socket.close(linger=0)


# --------------------------------------------------------------------------
# The publisher
# --------------------------------------------------------------------------


class HubPublisher:
    """Publish a monitor engine's state and records over ZeroMQ; take commands with a token.

    Parameters
    ----------
    engine : MonitorEngine
        The engine whose state is published (running or not: a stopped
        engine's state is still published, so viewers stay live and a late
        joiner is complete from its first message).
    publish : str
        Endpoint of the PUB socket (``tcp://127.0.0.1:5557`` by default;
        ``tcp://127.0.0.1:0`` lets ZeroMQ choose a free port).
    command : str, optional
        Endpoint of the command socket (a ROUTER); default the same host and
        the publish port + 1 (port 0 when publishing on port 0).
    token : str, optional
        The token commands must carry (default ``secrets.token_urlsafe(24)``).
    refresh_interval : float, optional
        Seconds between two state messages (default the engine's).
    records : bool
        Relay the records the engine processes.
    sndhwm : int
        The PUB socket's send high-water mark (messages per viewer): beyond
        it a slow viewer loses messages and the hub never waits.
    max_queued_batches : int
        Record batches held between the engine's processing thread and the
        publisher thread; when full, a batch is dropped and counted
        (``record_batches_dropped``; viewers see the gap in ``seq``).

    Attributes
    ----------
    publish_url, command_url : str or None
        The endpoints bound (after :meth:`start`).
    token : str
        The command token.
    identity : str or None
        Random hex, new at every :meth:`start`.
    started_at : float or None
        ``time.time()`` of the last start.
    states_published, record_batches_published, record_batches_dropped : int
        Messages sent, batches dropped because the queue was full.
    accepted_commands, refused_commands, malformed_commands : int
        Commands acted on; refused for a wrong or missing token; unreadable.

    Notes
    -----
    One thread ("astropix-hub-publisher") creates, binds, uses and closes
    both sockets. Commands run on it: ``start``/``stop`` call the engine's
    ``start()``/``stop()`` (its receiving), ``reset`` its ``reset()``, then a
    refresh when the engine is stopped so that its views show the reset. A
    state is published right after every accepted command.
    """

    #: Longest wait of the publisher loop for a command (s): also the longest
    #: a relayed record batch waits.
    POLL_S = 0.02
    #: Longest wait of :meth:`start` for the sockets to be bound (s).
    START_TIMEOUT_S = 10.0

    def __init__(
        self,
        engine: MonitorEngine,
        publish: str = DEFAULT_PUBLISH,
        *,
        command: str | None = None,
        token: str | None = None,
        refresh_interval: float | None = None,
        records: bool = True,
        sndhwm: int = 100,
        max_queued_batches: int = 1000,
    ) -> None:
        self.engine = engine
        self.publish = _check_url(publish, "publish endpoint")
        self.command = _check_url(command, "command endpoint") if command is not None else _default_command(publish)
        if token is not None and (not isinstance(token, str) or not token):
            msg = f"token must be a non-empty string, got {token!r}"
            raise ValueError(msg)
        self.token = token if token is not None else secrets.token_urlsafe(24)
        interval = engine.refresh_interval if refresh_interval is None else refresh_interval
        if not interval > 0:
            msg = f"refresh_interval must be > 0 s, got {interval}"
            raise ValueError(msg)
        self.refresh_interval = float(interval)
        self.records = bool(records)
        self.sndhwm = int(sndhwm)
        self.publish_url: str | None = None
        self.command_url: str | None = None
        self.identity: str | None = None
        self.started_at: float | None = None
        self.states_published = 0
        self.record_batches_published = 0
        self.record_batches_dropped = 0
        self.accepted_commands = 0
        self.refused_commands = 0
        self.malformed_commands = 0
        #: History replies sent, and refused because more than MAX_HISTORY_PER_S were asked.
        self.history_replies = 0
        self.history_refused = 0
        self._history_times: list[float] = []
        self._win_after: int | None = None  # slots up to this one were sent complete
        self._win_generation: int | None = None  # None: no state sent yet since the start
        self._win_head_sig: tuple[Any, ...] = ()
        self._queue: queue.Queue[tuple[int, list[bytes]]] = queue.Queue(maxsize=max(1, int(max_queued_batches)))
        self._records_seq = 0
        self._relaying = False
        self._callback_added = False
        self._seq = 0
        self._publish_now = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        """True while the publisher thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> HubPublisher:
        """Bind both sockets and start publishing; returns the publisher at once.

        Raises :class:`HubAddressInUseError` (one-line message) when an
        endpoint is taken, ``OSError``/``ValueError`` for another bind error.
        Starting a running publisher does nothing.
        """
        with self._lock:
            if self.running:
                return self
            self._stop.clear()
            self._ready.clear()
            self._start_error = None
            self.identity = secrets.token_hex(8)
            self.started_at = time.time()
            self._seq = 0
            self._records_seq = 0
            self._win_after = None
            self._win_generation = None
            self._win_head_sig = ()
            self._drain_queue()
            self._thread = threading.Thread(target=self._run, name="astropix-hub-publisher", daemon=True)
            self._thread.start()
            if not self._ready.wait(self.START_TIMEOUT_S):
                self._stop_thread()
                msg = f"the hub publisher did not bind {self.publish} within {self.START_TIMEOUT_S} s"
                raise RuntimeError(msg)
            if self._start_error is not None:
                self._stop_thread()
                raise self._start_error
            if self.records and not self._callback_added:
                self.engine.add_records_callback(self._on_records)
                self._callback_added = True
            self._relaying = self.records
        logger.info("hub publishing on %s, commands on %s: %s", self.publish_url, self.command_url, self.exposure())
        return self

    def stop(self) -> None:
        """Stop publishing, join the thread, close the sockets; safe twice.

        The engine keeps running; the records callback left on it does nothing
        while the publisher is stopped.
        """
        with self._lock:
            self._relaying = False
            self._stop_thread()
            self._drain_queue()

    def _stop_thread(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
            if thread.is_alive():
                logger.error("hub publisher thread still alive after stop()")
        self._thread = None

    def __enter__(self) -> HubPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"HubPublisher({self.publish_url or self.publish!r}, {'running' if self.running else 'stopped'})"

    # ------------------------------------------------------------------ identity
    def exposure(self) -> str:
        """Who can attach, in one sentence (loopback only, all interfaces...)."""
        return describe_hub_exposure(self.publish_url or self.publish)

    def info(self) -> HubInfo:
        """The ``hub`` block of the state messages."""
        return HubInfo(
            identity=self.identity or "",
            started_at=float(self.started_at or 0.0),
            address=(str(self.engine.group), int(self.engine.port)),
            exposure=self.engine.exposure(),
            publish=self.publish_url or self.publish,
            command=self.command_url or self.command,
            refresh_interval=self.refresh_interval,
            attach=self.exposure(),
        )

    # ------------------------------------------------------------------ engine side
    def _on_records(self, records: list[bytes]) -> None:
        """The engine's records callback (its processing thread): queue the batch, never wait."""
        if not self._relaying:
            return
        self._records_seq += 1
        try:
            self._queue.put_nowait((self._records_seq, list(records)))
        except queue.Full:
            self.record_batches_dropped += 1
            if _log_limited(self.record_batches_dropped):
                logger.warning("hub: record queue full, %d batches dropped so far", self.record_batches_dropped)

    def _drain_queue(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        pub = cmd = None
        try:
            pub, cmd = self._open_sockets()
        except Exception as exc:
            self._start_error = exc
            _close(pub)
            _close(cmd)
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop(pub, cmd)
        except Exception:  # the loop handles every message; this is a last resort
            logger.exception("hub publisher thread ended on an error")
        finally:
            _close(pub)
            _close(cmd)

    def _open_sockets(self) -> tuple[zmq.Socket, zmq.Socket]:
        ctx = zmq.Context.instance()
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, self.sndhwm)
        try:
            self.publish_url = _bind(pub, self.publish)
            cmd = ctx.socket(zmq.ROUTER)
        except Exception:
            _close(pub)
            raise
        cmd.setsockopt(zmq.LINGER, 0)
        cmd.setsockopt(zmq.MAXMSGSIZE, 1 << 16)
        try:
            self.command_url = _bind(cmd, self.command)
        except Exception:
            _close(pub)
            _close(cmd)
            raise
        return pub, cmd

    def _loop(self, pub: zmq.Socket, cmd: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(cmd, zmq.POLLIN)
        next_state = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_state or self._publish_now:
                self._publish_now = False
                self._publish_state(pub)
                next_state += self.refresh_interval
                if next_state <= now:
                    next_state = now + self.refresh_interval
            self._relay_records(pub)
            wait = min(self.POLL_S, max(0.0, next_state - time.monotonic()))
            if poller.poll(int(wait * 1000)):
                self._answer_commands(cmd)

    def _publish_state(self, pub: zmq.Socket) -> None:
        self._seq += 1
        frames = encode_state(self.engine.state(), self.info(), self._seq, windows=self._window_block())
        with contextlib.suppress(zmq.Again):  # a PUB socket drops at its high-water mark; never waits
            pub.send_multipart(frames, flags=zmq.NOBLOCK)
        self.states_published += 1

    # ------------------------------------------------------------------ time windows
    def _block(self, data: dict[str, Any], slices: Sequence[SecondSlice]) -> WindowBlock:
        windows = self.engine.windows
        return WindowBlock(
            generation=int(data["generation"]),
            head=data["head"],
            now=float(data["now"]),
            granularity=float(windows.granularity),
            max_seconds=float(windows.max_seconds),
            num_rows=int(windows.num_rows),
            num_cols=int(windows.num_cols),
            tot_edges=np.asarray(windows.tot_edges, dtype=float),
            slices=tuple(slices),
        )

    def _window_block(self) -> WindowBlock | None:
        """The slots to send with the next state: completed since the last one, and the newest if it changed.

        The first state after a start sends only the newest slot (a viewer
        asks for the history); after a reset of the engine (its windows'
        generation changed) the whole, fresh ring. No slice for seconds with
        no hit, none for an unchanged newest slot: an idle hub sends the
        block's few numbers only.
        """
        engine = self.engine
        if not hasattr(engine, "window_slices"):
            return None
        if self._win_generation is None:
            head = engine.windows.head
            data = engine.window_slices(None if head is None else head - 1)
        else:
            data = engine.window_slices(self._win_after)
            if data["generation"] != self._win_generation:
                data = engine.window_slices(None)
                self._win_head_sig = ()
        slices = data["slices"]
        sig = tuple((sl.second, sl.chip, int(sl.tots.sum())) for sl in slices if not sl.complete)
        if slices and all(not sl.complete for sl in slices) and sig == self._win_head_sig:
            slices = []  # only the newest slot, unchanged since the last state
        elif sig:
            self._win_head_sig = sig
        self._win_generation = data["generation"]
        if data["head"] is not None:
            self._win_after = int(data["head"]) - 1
        return self._block(data, slices)

    def _history_reply(self) -> list[bytes]:
        """The whole ring and the whole run's per-pixel spectra, for a viewer that joins or lost states."""
        data = self.engine.window_slices(None, totals=True)
        trend = getattr(self.engine, "trend", None)
        points = None
        if trend is not None:
            with self.engine._processing_lock:
                arrays = trend.arrays()
            points = np.vstack([arrays.t, arrays.readout_rate, arrays.hit_rate])
        block = self._block(data, data["slices"])
        return encode_history(block, data["pixel_totals"], self.identity or "", self._seq, points)

    def _relay_records(self, pub: zmq.Socket, most: int = 200) -> None:
        identity = self.identity or ""
        for _ in range(most):
            try:
                seq, records = self._queue.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(zmq.Again):
                pub.send_multipart(encode_records(records, identity, seq), flags=zmq.NOBLOCK)
            self.record_batches_published += 1

    # ------------------------------------------------------------------ commands
    def _answer_commands(self, cmd: zmq.Socket, most: int = 100) -> None:
        for _ in range(most):
            try:
                frames = cmd.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            envelope, body = _split_envelope(frames)
            answer = self._handle_command(body)
            reply = answer if isinstance(answer, list) else [json.dumps(answer).encode("utf-8")]
            with contextlib.suppress(zmq.ZMQError):  # the asker went away
                cmd.send_multipart([*envelope, *reply], flags=zmq.NOBLOCK)

    def _handle_command(self, body: list[bytes]) -> dict[str, Any] | list[bytes]:
        """One command's reply (never raises): a JSON object, or the frames of a history reply."""
        try:
            request = _parse_command(body)
        except HubMessageError as exc:
            self.malformed_commands += 1
            if _log_limited(self.malformed_commands):
                logger.warning("hub: malformed command (%d so far): %s", self.malformed_commands, exc)
            return {"ok": False, "error": f"malformed command: {exc}"}
        name = request["command"]
        if name == "ping":
            return {"ok": True, "command": "ping", "hub": self.info().as_dict(), "running": self.engine.running}
        if name == "history":
            return self._answer_history()
        token = request.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode("utf-8"), self.token.encode("utf-8")):
            self.refused_commands += 1
            if _log_limited(self.refused_commands):
                logger.warning("hub: refused %r: wrong or missing token (%d refused so far)", name[:20], self.refused_commands)
            return {"ok": False, "error": "refused: wrong or missing token"}
        return self._act(name)

    def _answer_history(self) -> dict[str, Any] | list[bytes]:
        """A history reply, at most MAX_HISTORY_PER_S a second (then "busy"); never raises."""
        now = time.monotonic()
        self._history_times = [t for t in self._history_times if now - t < 1.0]
        if len(self._history_times) >= MAX_HISTORY_PER_S or not hasattr(self.engine, "window_slices"):
            self.history_refused += 1
            return {"ok": False, "busy": True, "error": "busy: too many history requests, ask again in a second"}
        self._history_times.append(now)
        try:
            reply = self._history_reply()
        except Exception as exc:  # never let a reply stop the publisher
            logger.error("hub: history reply failed: %s", exc)
            return {"ok": False, "error": f"history failed: {type(exc).__name__}"}
        self.history_replies += 1
        return reply

    def _act(self, name: str) -> dict[str, Any]:
        actions: dict[str, Callable[[], None]] = {"reset": self._reset_engine, "stop": self.engine.stop, "start": self.engine.start}
        action = actions.get(name)
        if action is None:
            return {"ok": False, "error": f"unknown command {name[:40]!r}: one of {', '.join(COMMANDS)}"}
        try:
            action()
        except Exception as exc:  # e.g. start: the UDP port is now taken
            logger.error("hub: command %s failed: %s", name, exc)
            return {"ok": False, "error": f"{name} failed: {exc}"}
        self.accepted_commands += 1
        self._publish_now = True
        logger.info("hub: command %s done", name)
        return {"ok": True, "command": name, "running": self.engine.running}

    def _reset_engine(self) -> None:
        self.engine.reset()
        if not self.engine.running:
            self.engine.refresh()


def _split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """A ROUTER message's routing envelope (through the empty delimiter) and body."""
    for k, frame in enumerate(frames):
        if frame == b"":
            return frames[: k + 1], frames[k + 1 :]
    return frames[:1], frames[1:]


def _parse_command(body: list[bytes]) -> dict[str, Any]:
    if len(body) != 1:
        msg = f"a command is one frame, got {len(body)}"
        raise HubMessageError(msg)
    try:
        request = json.loads(body[0].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        msg = f"not JSON: {exc}"
        raise HubMessageError(msg) from None
    if not isinstance(request, dict) or not isinstance(request.get("command"), str):
        msg = 'expected {"command": NAME, "token": TOKEN}'
        raise HubMessageError(msg)
    return request


def request_history(url: str, timeout: float = 5.0) -> list[bytes]:
    """Ask a hub's command endpoint for its history (no token needed); the reply's frames, for :func:`decode_history`.

    A fresh REQ socket, which accepts at most :data:`MAX_MESSAGE_BYTES` (ZeroMQ
    drops a larger reply: no reply then).

    Raises
    ------
    HubCommandError
        No reply within ``timeout`` seconds, or a refusal (a one-frame JSON reply, e.g. "busy").
    """
    sock = zmq.Context.instance().socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        sock.connect(url)
        sock.send(json.dumps({"command": "history"}).encode("utf-8"))
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            msg = f"no history from the hub's command endpoint {url} within {timeout:g} s"
            raise HubCommandError(msg)
        frames = sock.recv_multipart()
    finally:
        sock.close(linger=0)
    if len(frames) == 1:
        try:
            reply = json.loads(frames[0].decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            reply = None
        error = reply.get("error", "no reason given") if isinstance(reply, dict) else "not a history reply"
        msg = f"the hub {url} gave no history: {str(error)[:200]}"
        if isinstance(reply, dict) and reply.get("busy") is True:
            raise HubBusyError(msg)
        raise HubCommandError(msg)
    return frames


def request_command(url: str, request: Mapping[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one command to a hub's command endpoint and return its JSON reply.

    A fresh REQ socket per call (usable from any thread), closed with LINGER 0.

    Raises
    ------
    HubCommandError
        When no reply came within ``timeout`` seconds, or it is not a JSON object.
    """
    sock = zmq.Context.instance().socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        sock.connect(url)
        sock.send(json.dumps(dict(request)).encode("utf-8"))
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            msg = f"no reply from the hub's command endpoint {url} within {timeout:g} s"
            raise HubCommandError(msg)
        raw = sock.recv_multipart()
    finally:
        sock.close(linger=0)
    try:
        reply = json.loads(raw[-1].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        reply = None
    if not isinstance(reply, dict):
        msg = f"the reply of {url} is not a JSON object"
        raise HubCommandError(msg)
    return reply


# --------------------------------------------------------------------------
# The viewer
# --------------------------------------------------------------------------


def _zero_status() -> Status:
    """Every counter of the status table at zero (``None`` for times)."""
    values = {c.name: None if c.kind == "time" else 0.0 if c.kind in ("rate", "seconds") else 0 for c in STATUS_TABLE}
    return Status.from_dict(values, taken_at=0.0)


class HubLink:
    """What a viewer knows of one hub (its latest state and liveness).

    Attributes
    ----------
    url : str
        The hub's publish endpoint.
    token : str or None
        Its command token.
    state : HubState or None
        The latest state received.
    states_received, missed_updates, hub_restarts, malformed_messages : int
        States received, gaps in their ``seq``, identity changes seen,
        messages that could not be read.
    missed_record_batches : int
        Gaps in the record batches' ``seq`` plus batches dropped by the
        viewer's own full queue.
    plot_delay : float or None
        Seconds from the hub receiving the newest datagram of the state last
        handed to the refresh callbacks to that refresh (the two machines'
        clocks, when hub and viewer are on different hosts).
    """

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token
        self.state: HubState | None = None
        self.identity: str | None = None
        self.last_seq: int | None = None
        self.received_mono: float | None = None
        self.states_received = 0
        self.missed_updates = 0
        self.hub_restarts = 0
        self.malformed_messages = 0
        self.records_identity: str | None = None
        self.last_records_seq: int | None = None
        self.missed_record_batches = 0
        self.plot_delay: float | None = None
        self.shown_datagram: float | None = None
        self.was_connected = False
        self.restarted = False
        # The time windows of this hub (built from its first state's window block).
        self.windows: WindowedAccumulator | None = None
        self.pixel_tots: PixelTots | None = None
        self.win_identity: str | None = None
        self.win_layout: tuple[Any, ...] | None = None
        self.win_generation: int | None = None
        self.win_seq: int | None = None  # the last state whose slices are in the windows
        self.win_now: float | None = None  # the hub's clock at that state: the windows end there
        self.win_synced = False  # True once a history was applied (and no state lost since)
        #: History requests answered and applied, failed (no answer, refused), and malformed (refused by the checks).
        self.histories = 0
        self.history_failures = 0
        self.malformed_histories = 0
        #: Resynchronisations after a gap in the states' sequence.
        self.window_resyncs = 0
        self.history_next_try = 0.0
        #: The hub's whole-run rates: its trend's points from the history, then one point per state.
        self.trend = RateTrend(MonitorEngine.TREND_POINTS)
        self.trend_last: float | None = None

    @property
    def refresh_interval(self) -> float | None:
        """The hub's refresh interval (None before its first state)."""
        return None if self.state is None else self.state.hub.refresh_interval

    def seconds_since_update(self, now: float | None = None) -> float | None:
        """Seconds since its last state arrived (None before the first)."""
        if self.received_mono is None:
            return None
        return (time.monotonic() if now is None else now) - self.received_mono

    def connected(self, now: float | None = None) -> bool:
        """False before the first state and after 2 of the hub's refresh intervals without one."""
        since = self.seconds_since_update(now)
        interval = self.refresh_interval
        return since is not None and interval is not None and since <= 2.0 * interval

    @property
    def command_url(self) -> str:
        """Where to send commands: the hub's command port on the host this viewer reaches it by.

        Before the first state: the publish port + 1 (the hub's default).
        """
        tcp = _split_tcp(self.url)
        if self.state is None:
            return _default_command(self.url)
        advertised = _split_tcp(self.state.hub.command)
        if tcp is None or advertised is None:
            return self.state.hub.command
        return f"tcp://{tcp[0]}:{advertised[1]}"


class ViewerWindows:
    """A viewer's time windows: the read interface of :class:`~astropix_nbmonitor.windows.WindowedAccumulator`.

    Each hub's ring is read at that hub's clock of its last state (the
    ``now`` arguments are accepted for the interface and not used), and the
    hubs are summed. Before any state: empty, with the defaults' layout.
    """

    def __init__(self, engine: HubEngine) -> None:
        self._engine = engine
        self._template = WindowedAccumulator(engine.num_rows, engine.num_cols, tot_edges=TOT_EDGES)

    def _parts(self) -> list[tuple[WindowedAccumulator, float]]:
        return [
            (link.windows, link.win_now)
            for link in self._engine.links.values()
            if link.windows is not None and link.win_now is not None
        ]

    def _first(self) -> WindowedAccumulator:
        for link in self._engine.links.values():
            if link.windows is not None:
                return link.windows
        return self._template

    @property
    def max_seconds(self) -> float:
        """The longest window (the hub's)."""
        return self._first().max_seconds

    @property
    def granularity(self) -> float:
        """Seconds per slot (the hub's)."""
        return self._first().granularity

    @property
    def tot_edges(self) -> np.ndarray:
        return self._first().tot_edges

    @property
    def chips_seen(self) -> tuple[int, ...]:
        """Chip ids with hits in the windows, sorted."""
        return tuple(sorted({c for w, _ in self._parts() for c in w.chips_seen}))

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w, _ in self._parts())

    @property
    def pixel_nbytes(self) -> int:
        return sum(w.pixel_nbytes for w, _ in self._parts())

    def counts(self, seconds: float, now: float | None = None) -> np.ndarray:
        """Hit counts ``(NUM_CHIPS, num_cols, num_rows)`` of the last ``seconds``, summed over the hubs."""
        out = self._template.counts(seconds, 0.0) if not self._parts() else None
        for windows, hub_now in self._parts():
            part = windows.counts(seconds, hub_now)
            out = part if out is None else out + part
        return out

    def hit_map(self, seconds: float, chip: int | None = None, now: float | None = None) -> bh.Histogram:
        out = self._template.hit_map(seconds, chip, 0.0)
        for windows, hub_now in self._parts():
            out += windows.hit_map(seconds, chip, hub_now)
        return out

    def tot_hist(self, seconds: float, chip: int | None = None, now: float | None = None) -> bh.Histogram:
        parts = self._parts()
        if not parts:
            return self._template.tot_hist(seconds, chip, 0.0)
        out = parts[0][0].tot_hist(seconds, chip, parts[0][1])
        for windows, hub_now in parts[1:]:
            out += windows.tot_hist(seconds, chip, hub_now)
        return out

    def pixel_rate(
        self, column: int, row: int, chip_id: int | None = None, seconds: float = 60.0, now: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One pixel's hits per second in each slot of the last ``seconds`` (times relative to the hub's clock)."""
        parts = self._parts()
        if not parts:
            return self._template.pixel_rate(column, row, chip_id, seconds, 0.0)
        times, rates = parts[0][0].pixel_rate(column, row, chip_id, seconds, parts[0][1])
        for windows, hub_now in parts[1:]:
            rates = rates + windows.pixel_rate(column, row, chip_id, seconds, hub_now)[1]
        return times, rates

    def masked_tot_counts(
        self, seconds: float, pixels: Iterable[tuple[int, int, int]], chip: int | None = None, now: float | None = None
    ) -> tuple[np.ndarray, bool]:
        pixels = list(pixels)
        counts, exact = self._template.masked_tot_counts(seconds, [], chip, 0.0)
        for windows, hub_now in self._parts():
            part, part_exact = windows.masked_tot_counts(seconds, pixels, chip, hub_now)
            counts, exact = counts + part, exact and part_exact
        return counts, exact and all(link.win_synced for link in self._engine.links.values() if link.windows is not None)

    def pixel_tot_hist(
        self, seconds: float, column: int, row: int, chip_id: int | None = None, now: float | None = None
    ) -> bh.Histogram:
        out = self._template.pixel_tot_hist(seconds, column, row, chip_id, 0.0)
        for windows, hub_now in self._parts():
            out += windows.pixel_tot_hist(seconds, column, row, chip_id, hub_now)
        return out


class ViewerPixelTots:
    """A viewer's whole-run per-pixel TOT spectra: the read interface of :class:`~astropix_nbmonitor.windows.PixelTots`, summed over the hubs."""

    def __init__(self, engine: HubEngine) -> None:
        self._engine = engine
        self._template = PixelTots(engine.num_rows, engine.num_cols, tot_edges=TOT_EDGES)

    def _parts(self) -> list[PixelTots]:
        return [link.pixel_tots for link in self._engine.links.values() if link.pixel_tots is not None]

    @property
    def tot_edges(self) -> np.ndarray:
        parts = self._parts()
        return (parts[0] if parts else self._template).tot_edges

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self._parts())

    @property
    def chips_seen(self) -> tuple[int, ...]:
        return tuple(sorted({c for p in self._parts() for c in p.chips_seen}))

    def pixel_counts(self, column: int, row: int, chip_id: int | None = None) -> np.ndarray:
        out = self._template.pixel_counts(column, row, chip_id)
        for part in self._parts():
            out = out + part.pixel_counts(column, row, chip_id)
        return out

    def pixel_tot_hist(self, column: int, row: int, chip_id: int | None = None) -> bh.Histogram:
        hist = self._template.pixel_tot_hist(0, 0)
        hist.view(flow=True)[...] = self.pixel_counts(column, row, chip_id)
        return hist

    def sum_pixels(self, pixels: Iterable[tuple[int, int, int]]) -> np.ndarray:
        pixels = list(pixels)
        out = self._template.sum_pixels([])
        for part in self._parts():
            out = out + part.sum_pixels(pixels)
        return out


class HubEngine:
    """A viewer's engine: the interface of a ``MonitorEngine``, fed by one or several hubs.

    Parameters
    ----------
    hubs : str or sequence of str
        The hubs' publish endpoints (``tcp://host:5557``).
    token : str or mapping, optional
        The hubs' command token (one for all, or ``{url: token}``); without
        it the viewer is read-only (:meth:`command` raises ``PermissionError``).
    readout_class : type
        The readout class of relayed records (for :meth:`decode_readout`).
    refresh_interval : float
        Seconds between two refreshes (callbacks) of the viewer.
    records : bool
        Subscribe to the hubs' relayed records and hand them to ``process``.
    process : callable, optional
        ``process(records)``: called with every relayed batch, in order, on
        the refresh thread.
    command_timeout : float
        Longest wait for a hub's reply to a command (s), or to a history request.
    pixel_budget_bytes : int
        Byte budget of each hub's per-second per-pixel TOT counts kept here
        (:class:`~astropix_nbmonitor.windows.PixelDeltas`).

    Notes
    -----
    Threads: the listener thread ("astropix-hub-viewer-listener") creates,
    uses and closes one SUB socket per hub, decodes every message and keeps
    the latest state of each hub; the refresh thread
    ("astropix-hub-viewer-refresh") hands relayed batches to ``process`` as
    they come and every ``refresh_interval`` calls the refresh callbacks,
    whether or not a new state came (so liveness shows). ``process`` and the
    callbacks run there, serialised by one lock (also taken by
    :meth:`refresh` and :meth:`reset`). ``state()`` and the histograms read
    the latest state received, whichever thread asks.

    Time windows. Each state carries the hub's per-second slots completed
    since the last state plus its newest one (hit map, TOT spectrum and sparse
    per-pixel TOT counts per chip: :class:`WindowBlock`); the listener thread
    sets them into this viewer's own :class:`~astropix_nbmonitor.windows.WindowedAccumulator`
    and :class:`~astropix_nbmonitor.windows.PixelTots` per hub, so that
    :attr:`windows`, :meth:`hit_map_window`, :meth:`tot_hist_window`,
    :meth:`pixel_tot_hist` and :meth:`masked_tot_window` answer as the hub's
    engine does, at the hub's clock of the last state. At the first state of a
    hub (a late joiner), after a hub restart (new identity: the windows are
    cleared) and after a gap in the states' ``seq``, it asks the hub for its
    history (``"history"`` on the command socket, no token: the whole ring
    and the whole run's per-pixel spectra, checked like every message and
    bounded by :data:`MAX_HISTORY_ELEMENTS`); a failed or malformed reply is
    counted (``history_failures``, ``malformed_histories``) and asked again
    after :attr:`HISTORY_RETRY_S`. A reset of the hub (its windows'
    generation) clears them too.

    Before the first message, :meth:`state` is an empty state (zero
    histograms of the readout class's matrix, zero counters, ``seq`` 0,
    ``hub.identity == ""``), so views draw an empty monitor.
    """

    #: Record batches held for the refresh thread; beyond, batches are dropped and counted.
    MAX_QUEUED_BATCHES = 1000
    #: Longest a processing turn runs before the refresh callbacks get their turn (s).
    PROCESS_SLICE_S = 0.05
    #: Longest wait of the listener loop (s).
    POLL_S = 0.1
    #: Events kept in :attr:`events`.
    MAX_EVENTS = 100
    #: Seconds before a failed history request is tried again.
    HISTORY_RETRY_S = 2.0

    def __init__(
        self,
        hubs: str | Sequence[str],
        *,
        token: str | Mapping[str, str] | None = None,
        readout_class: type[AbstractAstroPixReadout] = AstroPix4Readout,
        refresh_interval: float = 0.5,
        records: bool = False,
        process: Callable[[list[bytes]], Any] | None = None,
        command_timeout: float = 5.0,
        pixel_budget_bytes: int = PIXEL_BUDGET_BYTES,
    ) -> None:
        urls = [hubs] if isinstance(hubs, str) else list(hubs)
        if not urls:
            msg = "HubEngine needs at least one hub URL"
            raise ValueError(msg)
        self.hubs: list[str] = [_check_url(u, "hub") for u in urls]
        if len(set(self.hubs)) != len(self.hubs):
            msg = f"the same hub is given twice: {self.hubs}"
            raise ValueError(msg)
        self.links: dict[str, HubLink] = {u: HubLink(u, self._token_for(token, u)) for u in self.hubs}
        self.readout_class = readout_class
        self.decoder = decoder_for(readout_class)
        self.num_rows = int(getattr(readout_class, "NUM_ROWS", NUM_ROWS))
        self.num_cols = int(getattr(readout_class, "NUM_COLS", NUM_COLS))
        if not refresh_interval > 0:
            msg = f"refresh_interval must be > 0 s, got {refresh_interval}"
            raise ValueError(msg)
        self.refresh_interval = float(refresh_interval)
        self.update_pause = 0.0
        self.records = bool(records)
        self.command_timeout = float(command_timeout)
        self.listener = None
        self.events: list[tuple[float, str]] = []
        self.local_readouts = 0
        self.local_hits = 0
        self.relayed_records = 0
        self.relayed_batches = 0
        self._process_hook = process
        self._refresh_callbacks: list[Callable[[HubEngine], None]] = []
        self._records: list[list[bytes]] = []
        self._records_ready = threading.Event()
        self._lock = threading.Lock()  # links, the records queue, events, the combined state
        self._processing_lock = threading.RLock()  # process, callbacks, refresh, reset
        self._lifecycle_lock = threading.RLock()
        self._stop_event = threading.Event()
        self._listen_thread: threading.Thread | None = None
        self._refresh_thread: threading.Thread | None = None
        self._running = False
        self._errors = 0
        self._last_error = ""
        self._combined: HubState | None = None
        self._combinations = 0
        self._dirty = True
        self._empty = self._empty_state()
        self.pixel_budget_bytes = int(pixel_budget_bytes)
        #: The wall clock (alarms, trend): a viewer's windows end at each hub's own clock instead.
        self.clock: Callable[[], float] = time.time
        #: The time windows, from the hubs' per-second slices (each hub's read at that hub's clock).
        self.windows = ViewerWindows(self)
        #: The whole run's per-pixel TOT spectra, from the hubs' history and slices.
        self.pixel_tots = ViewerPixelTots(self)

    @staticmethod
    def _token_for(token: str | Mapping[str, str] | None, url: str) -> str | None:
        if token is None or isinstance(token, str):
            return token or None
        return token.get(url) or None

    def _empty_state(self) -> HubState:
        snap = HitAccumulator(self.num_rows, self.num_cols, tot_edges=TOT_EDGES).snapshot()
        maps, tots = snap["chip_hit_map"], snap["chip_tot_hist"]
        url = self.hubs[0]
        info = HubInfo("", 0.0, (url, 0), f"not connected yet to {url}", url, _default_command(url), self.refresh_interval)
        return HubState(
            seq=0,
            time=0.0,
            status=_zero_status(),
            histograms={"hit_map": maps[sum, :, :], "tot_hist": tots[sum, :], "chip_hit_map": maps, "chip_tot_hist": tots},
            chips=(),
            rates=np.zeros((3, 0)),
            running=False,
            hub=info,
            received_at=0.0,
        )

    def __repr__(self) -> str:
        return f"HubEngine({', '.join(self.hubs)})"

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        """True while attached (the refresh thread runs)."""
        return self._running

    def add_refresh_callback(self, callback: Callable[[HubEngine], None]) -> None:
        """Call ``callback(engine)`` at every refresh, on the refresh thread."""
        self._refresh_callbacks.append(callback)

    def start(self, refresh_interval: float | None = None, update_pause: float | None = None) -> HubEngine:
        """Attach (:meth:`start_listening` and :meth:`start_processing`); returns the engine at once."""
        with self._lifecycle_lock:
            if self._running:
                return self
            if refresh_interval is not None:
                if not refresh_interval > 0:
                    msg = f"refresh_interval must be > 0 s, got {refresh_interval}"
                    raise ValueError(msg)
                self.refresh_interval = float(refresh_interval)
            self.start_listening()
            self.start_processing()
        return self

    def start_listening(self, target: Callable[[], None] | None = None) -> None:
        """Start the listener thread, running ``target`` (default :meth:`listen`)."""
        with self._lifecycle_lock:
            if self._listen_thread is not None and self._listen_thread.is_alive():
                return
            self._stop_event.clear()
            self._listen_thread = threading.Thread(
                target=target or self.listen, name="astropix-hub-viewer-listener", daemon=True
            )
            self._listen_thread.start()

    def start_processing(self) -> None:
        """Start the refresh thread."""
        with self._lifecycle_lock:
            if self._running:
                return
            self._stop_event.clear()
            self._refresh_thread = threading.Thread(target=self._refresh_loop, name="astropix-hub-viewer-refresh", daemon=True)
            self._running = True
            self._refresh_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Detach: end both threads (their sockets closed); safe twice, from any thread."""
        with self._lifecycle_lock:
            self._stop_event.set()
            self._records_ready.set()
            current = threading.current_thread()
            for thread in (self._listen_thread, self._refresh_thread):
                if thread is not None and thread is not current:
                    thread.join(timeout)
                    if thread.is_alive():
                        logger.error("%r: thread %s still alive after stop()", self, thread.name)
            self._listen_thread = None
            self._refresh_thread = None
            self._running = False

    def close(self) -> None:
        """Stop and forget the callbacks; safe twice."""
        self.stop()
        self._refresh_callbacks.clear()

    # ------------------------------------------------------------------ the listener thread
    def listen(self) -> None:
        """Receive from every hub until :meth:`stop` (the listener thread's body)."""
        sockets: dict[zmq.Socket, HubLink] = {}
        try:
            poller = zmq.Poller()
            for url, link in self.links.items():
                sock = self._subscribe(url)
                sockets[sock] = link
                poller.register(sock, zmq.POLLIN)
            while not self._stop_event.is_set():
                for sock, _ in poller.poll(int(self.POLL_S * 1000)):
                    self._receive(sock, sockets[sock])
        except Exception as exc:  # each message is handled; this is a last resort
            self.note_error(exc)
            logger.exception("%r: listener thread ended on an error", self)
        finally:
            for sock in sockets:
                _close(sock)

    def _subscribe(self, url: str) -> zmq.Socket:
        sock = zmq.Context.instance().socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            sock.setsockopt(zmq.SUBSCRIBE, STATE_TOPIC)
            if self.records:
                sock.setsockopt(zmq.SUBSCRIBE, RECORDS_TOPIC)
            sock.connect(url)
        except Exception:
            _close(sock)
            raise
        return sock

    def _receive(self, sock: zmq.Socket, link: HubLink, most: int = 100) -> None:
        for _ in range(most):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(link, frames)

    def _handle(self, link: HubLink, frames: list[bytes]) -> None:
        """Decode one message; a malformed one is counted and logged (rate-limited), never raised."""
        try:
            topic = frames[0] if frames else b""
            if topic == STATE_TOPIC:
                state = decode_state(frames)
                if self._accept_state(link, state):
                    try:
                        self._accept_windows(link, state)
                    except Exception as exc:  # a state that passed the checks but not the windows: counted, never fatal
                        self.note_error(exc)
            elif topic == RECORDS_TOPIC:
                header, records = decode_records(frames)
                self._accept_records(link, header, records)
            else:
                msg = f"unknown topic {topic[:32]!r}"
                raise HubMessageError(msg)
        except HubMessageError as exc:
            link.malformed_messages += 1
            if _log_limited(link.malformed_messages):
                logger.warning("malformed message from hub %s (%d so far): %s", link.url, link.malformed_messages, exc)

    def _event(self, text: str) -> None:
        self.events.append((time.time(), text))
        del self.events[: -self.MAX_EVENTS]
        logger.info("%s", text)

    def _accept_state(self, link: HubLink, state: HubState) -> None:
        with self._lock:
            identity = state.hub.identity
            if link.identity is None:
                self._event(f"connected to hub {link.url} (identity {identity})")
            elif identity != link.identity:
                link.hub_restarts += 1
                link.last_seq = None
                link.restarted = True
                self._event(f"hub {link.url} restarted (new identity {identity}): reconnected")
            elif link.last_seq is not None and state.seq <= link.last_seq:
                logger.debug("hub %s: state %d after %d ignored", link.url, state.seq, link.last_seq)
                return False
            if link.last_seq is not None and state.seq > link.last_seq + 1:
                link.missed_updates += state.seq - link.last_seq - 1
            link.identity = identity
            link.last_seq = state.seq
            link.state = state
            link.received_mono = time.monotonic()
            link.states_received += 1
            self._dirty = True
        return True

    # ------------------------------------------------------------------ time windows (listener thread)
    def _new_link_windows(self, link: HubLink, block: WindowBlock, identity: str) -> None:
        """Fresh, empty windows for ``link`` in the hub's layout (processing lock held)."""
        windows = WindowedAccumulator(
            block.num_rows, block.num_cols, tot_edges=block.tot_edges, max_seconds=block.max_seconds,
            granularity=block.granularity,
        )
        pixel_tots = PixelTots(block.num_rows, block.num_cols, tot_edges=block.tot_edges)
        windows.receive_pixels(pixel_tots, self.pixel_budget_bytes)
        link.windows, link.pixel_tots = windows, pixel_tots
        link.win_identity, link.win_layout = identity, block.layout
        link.win_generation, link.win_seq, link.win_now, link.win_synced = block.generation, None, None, False
        link.history_next_try = 0.0

    def _accept_windows(self, link: HubLink, state: HubState) -> None:
        """Set a state's slots into the hub's windows; ask for the history when they are not complete."""
        block = state.windows
        if block is None:
            with self._processing_lock:
                self._add_trend_point(link, state)
            return
        with self._processing_lock:
            identity = state.hub.identity
            if link.win_identity is not None and (link.win_identity != identity or block.generation != link.win_generation):
                link.trend.clear()  # a restarted or reset hub: a new run
                link.trend_last = None
            self._add_trend_point(link, state)
            if link.windows is None or link.win_identity != identity or link.win_layout != block.layout:
                self._new_link_windows(link, block, identity)  # a new hub, or a restarted one: start again
            if link.win_seq is not None and state.seq <= link.win_seq:
                return  # already in the history applied
            if block.generation != link.win_generation:
                link.windows.reset()  # the hub was reset: this state brings its whole (fresh) ring
                link.pixel_tots.reset()
                link.win_generation = block.generation
            if link.win_seq is not None and state.seq > link.win_seq + 1 and link.win_synced:
                link.win_synced = False  # states were lost: their slots too
                link.window_resyncs += 1
            self._load_block(link, block, state.seq)
            if link.win_synced:
                return
        self._fetch_history(link)

    @staticmethod
    def _add_trend_point(link: HubLink, state: HubState) -> None:
        """One point of the hub's rates per state while it runs, after those of the history (processing lock held)."""
        when = float(state.windows.now if state.windows is not None else state.time)  # the hub engine's clock
        if not state.running or (link.trend_last is not None and when <= link.trend_last):
            return
        readout_rate = float(state.status.get("readout_rate", 0.0) or 0.0)
        hit_rate = float(state.status.get("hit_rate", 0.0) or 0.0)
        link.trend.add(when, readout_rate, hit_rate)
        link.trend_last = when

    def _load_block(self, link: HubLink, block: WindowBlock, seq: int, *, add_to_totals: bool = True) -> None:
        link.windows.load(block.slices, add_to_totals=add_to_totals)
        if block.head is not None:
            link.windows.advance_to(block.head)
        link.win_now = block.now
        link.win_seq = seq

    def _fetch_history(self, link: HubLink) -> None:
        """Ask the hub for its history and apply it (listener thread; at most every HISTORY_RETRY_S)."""
        if time.monotonic() < link.history_next_try:
            return
        # Jittered, so that viewers refused together ("busy") do not all ask again together.
        link.history_next_try = time.monotonic() + self.HISTORY_RETRY_S * (1.0 + secrets.randbelow(1000) / 1000)
        try:
            history = decode_history(request_history(link.command_url, self.command_timeout))
        except HubBusyError as exc:
            link.history_failures += 1
            logger.debug("hub %s is busy, history asked again later: %s", link.url, exc)
            return
        except HubMessageError as exc:
            link.malformed_histories += 1
            if _log_limited(link.malformed_histories):
                logger.warning("malformed history from hub %s (%d so far): %s", link.url, link.malformed_histories, exc)
            return
        except (HubCommandError, zmq.ZMQError) as exc:
            link.history_failures += 1
            if _log_limited(link.history_failures):
                logger.warning("no history from hub %s (%d failures so far): %s", link.url, link.history_failures, exc)
            return
        block = history.windows
        with self._processing_lock:
            if history.hub != link.win_identity or block.layout != link.win_layout:
                link.history_failures += 1  # the hub restarted in between: its next state starts again
                return
            link.windows.reset()
            link.pixel_tots.reset()
            for chip, index, count in history.pixel_totals:
                link.pixel_tots.add_sparse(chip, index, count)
            self._load_block(link, block, history.seq, add_to_totals=False)
            if history.trend is not None:
                newer = link.trend.arrays()  # points of states received meanwhile, after the history's
                link.trend.clear()
                for t, r, h in history.trend.T:
                    link.trend.add(float(t), float(r), float(h))
                last = float(history.trend[0, -1]) if history.trend.shape[1] else None
                for t, r, h in zip(newer.t, newer.readout_rate, newer.hit_rate):
                    if last is None or t > last:
                        link.trend.add(float(t), float(r), float(h))
                        last = float(t)
                link.trend_last = last
            link.win_generation = block.generation
            link.win_synced = True
            link.histories += 1
            link.history_next_try = 0.0  # the wait is for failures only
        self._event(f"time windows of hub {link.url}: history of {len(block.slices)} slices received")

    def _accept_records(self, link: HubLink, header: dict[str, Any], records: list[bytes]) -> None:
        with self._lock:
            identity, seq = header["hub"], header["seq"]
            if identity != link.records_identity:
                link.records_identity = identity
                link.last_records_seq = None
            if link.last_records_seq is not None and seq > link.last_records_seq + 1:
                link.missed_record_batches += seq - link.last_records_seq - 1
            link.last_records_seq = seq
            if len(self._records) >= self.MAX_QUEUED_BATCHES:
                link.missed_record_batches += 1
                return
            self._records.append(records)
        self._records_ready.set()

    # ------------------------------------------------------------------ the refresh thread
    def _refresh_loop(self) -> None:
        last = time.monotonic()
        try:
            while not self._stop_event.is_set():
                self._process_pending(self.PROCESS_SLICE_S)
                now = time.monotonic()
                if now - last >= self.refresh_interval:
                    self._process_pending(self.PROCESS_SLICE_S)
                    self.refresh(now - last)
                    last = now
                    continue
                self._records_ready.wait(min(0.05, self.refresh_interval - (now - last)))
                self._records_ready.clear()
        finally:
            self._running = False

    def _process_pending(self, limit_s: float) -> None:
        """Hand queued record batches, in order, to ``process`` for at most about ``limit_s``."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._records:
                    return
                batch = self._records.pop(0)
            self.relayed_batches += 1
            self.relayed_records += len(batch)
            if self._process_hook is None:
                continue
            with self._processing_lock:
                try:
                    self._process_hook(batch)
                except Exception as exc:
                    self.note_error(exc)

    def refresh(self, dt: float | None = None, *, paced: bool = False) -> None:
        """Note liveness and the plot delay, then call the refresh callbacks now.

        ``dt`` and ``paced`` are accepted for the interface of
        ``MonitorEngine.refresh`` and not used (a viewer's rates are the hub's).

        The refresh thread calls it every ``refresh_interval``; called by hand
        (a view's ``refresh()``), the callbacks run in the caller's thread,
        under the same lock as ``process`` and the thread's refreshes.
        Relayed records are handed to ``process`` by the refresh thread only.
        """
        with self._processing_lock:
            self._note_liveness()
            self._note_plot_delay()
            for callback in list(self._refresh_callbacks):
                try:
                    callback(self)
                except Exception as exc:
                    self.note_error(exc)

    def _note_liveness(self) -> None:
        now = time.monotonic()
        with self._lock:
            for link in self.links.values():
                connected = link.connected(now)
                if link.was_connected and not connected:
                    since = link.seconds_since_update(now) or 0.0
                    self._event(f"no update from hub {link.url} for {since:.1f} s: not connected")
                elif connected and not link.was_connected and link.states_received > 1 and not link.restarted:
                    self._event(f"updates from hub {link.url} again")
                link.restarted = False if connected else link.restarted
                link.was_connected = connected

    def _note_plot_delay(self) -> None:
        wall = time.time()
        with self._lock:
            for link in self.links.values():
                shown = None if link.state is None else link.state.status.get("last_datagram")
                if shown is not None and shown != link.shown_datagram:
                    link.plot_delay = wall - float(shown)
                    link.shown_datagram = shown

    # ------------------------------------------------------------------ data out
    def _latest(self) -> HubState:
        """The latest state (several hubs: their sum); empty before any."""
        with self._lock:
            if not self._dirty and self._combined is not None:
                return self._combined
            states = [link.state for link in self.links.values() if link.state is not None]
            if not states:
                return self._empty
            if len(self.links) == 1:
                combined = states[0]
            else:
                try:
                    self._combinations += 1
                    combined = combine_states(states, self._combinations)
                except (ValueError, KeyError) as exc:  # hubs with different axes or histograms: show the first
                    self.note_error(exc)
                    combined = states[0]
            self._combined = combined
            self._dirty = False
            return combined

    def status(self) -> Status:
        """Every counter of the hub (several: summed); zeros before the first message."""
        return self._latest().status

    def state(self, window: float | None = None) -> HubState:
        """The latest state (several hubs: their sum, see :func:`combine_states`); empty before any.

        ``window`` (seconds): ``hit_map``, ``tot_hist``, ``chip_hit_map`` and
        ``chip_tot_hist`` are those of the last ``window`` seconds, from this
        viewer's :attr:`windows` (as ``MonitorEngine.state(window=)``).
        """
        base = self._latest()
        window = float(window or 0.0)
        if not window:
            return base
        with self._processing_lock:
            maps = base.histograms["chip_hit_map"].copy()
            tots = base.histograms["chip_tot_hist"].copy()
            maps.view()[...] = self.windows.counts(window)
            flow = tots.view(flow=True)
            flow[...] = 0
            for chip in self.windows.chips_seen:
                flow[chip] = self.windows.tot_hist(window, chip).values(flow=True)
        histograms = {"hit_map": maps[sum, :, :], "tot_hist": tots[sum, :], "chip_hit_map": maps, "chip_tot_hist": tots}
        state = dataclasses.replace(base, histograms=histograms)
        object.__setattr__(state, "window", window)  # frozen: set once, here (as MonitorEngine.state)
        return state

    def hit_map_window(self, seconds: float, chip: int | None = None) -> bh.Histogram:
        """The hit map (axes column, row) of the last ``seconds`` at the hub's clock, all chips or one chip_id."""
        with self._processing_lock:
            return self.windows.hit_map(seconds, chip)

    def tot_hist_window(self, seconds: float, chip: int | None = None) -> bh.Histogram:
        """The TOT spectrum (us, with under/overflow) of the last ``seconds`` at the hub's clock."""
        with self._processing_lock:
            return self.windows.tot_hist(seconds, chip)

    def masked_tot_window(
        self, seconds: float, pixels: Any, chip: int | None = None, now: float | None = None
    ) -> tuple[np.ndarray, bool]:
        """TOT counts of ``(chip_id, column, row)`` pixels in the last ``seconds``, and exact (see ``MonitorEngine``).

        Not exact either while a hub's history has not been received.
        """
        with self._processing_lock:
            return self.windows.masked_tot_counts(seconds, list(pixels), chip)

    def pixel_tot_hist(self, column: int, row: int, chip_id: int | None = None, seconds: float | None = None) -> bh.Histogram:
        """The TOT spectrum of pixel (column, row): the whole run, or the last ``seconds``."""
        with self._processing_lock:
            if seconds:
                return self.windows.pixel_tot_hist(seconds, column, row, chip_id)
            return self.pixel_tots.pixel_tot_hist(column, row, chip_id)

    @property
    def trend(self) -> RateTrend:
        """The (first) hub's whole-run rates, downsampled (``RateTrend``): its trend's points from the history, then one per state."""
        return self.links[self.hubs[0]].trend

    @property
    def windows_synced(self) -> bool:
        """True when every hub's history was received and no state was lost since (the windows are complete)."""
        return all(link.win_synced for link in self.links.values())

    @property
    def history_failures(self) -> int:
        """History requests that got no (or a refused) answer, over the hubs."""
        return sum(link.history_failures for link in self.links.values())

    @property
    def malformed_histories(self) -> int:
        """History replies refused by the checks (malformed, over the element budget), over the hubs."""
        return sum(link.malformed_histories for link in self.links.values())

    def hub_statuses(self) -> dict[str, Status]:
        """Each hub's own counters, by URL (zeros before its first message)."""
        with self._lock:
            return {url: link.state.status if link.state is not None else _zero_status() for url, link in self.links.items()}

    def hit_map(self, chip: int | None = None) -> bh.Histogram:
        """A copy of the hub's hit map (axes column, row) of all chips, or of one chip_id."""
        return self.state().chip_hit_map(chip).copy()

    def tot_hist(self, chip: int | None = None) -> bh.Histogram:
        """A copy of the hub's TOT spectrum (us, with under/overflow), all chips or one."""
        return self.state().chip_tot_hist(chip).copy()

    @property
    def chips_seen(self) -> list[int]:
        """The chip_ids the hub has seen."""
        return list(self.state().chips)

    @property
    def out_of_matrix(self) -> int:
        """Hits outside the matrix, as counted by the hub."""
        return int(self.status().get("out_of_matrix", 0) or 0)

    @property
    def num_readouts(self) -> int:
        """Readouts the hub processed."""
        return int(self.status().get("readouts", 0) or 0)

    @property
    def num_hits(self) -> int:
        """Hits the hub decoded."""
        return int(self.status().get("hits", 0) or 0)

    @property
    def rates(self) -> tuple[float, float]:
        """The hub's readouts/s and hits/s."""
        status = self.status()
        return float(status.get("readout_rate", 0.0) or 0.0), float(status.get("hit_rate", 0.0) or 0.0)

    @property
    def uptime(self) -> float:
        """The hub's uptime (s)."""
        return float(self.status().get("uptime", 0.0) or 0.0)

    # ------------------------------------------------------------------ identity
    def _first_info(self) -> HubInfo | None:
        link = self.links[self.hubs[0]]
        return None if link.state is None else link.state.hub

    @property
    def group(self) -> str:
        """The hub's UDP group (the hub's URL before its first message)."""
        info = self._first_info()
        return self.hubs[0] if info is None else info.address[0]

    @property
    def port(self) -> int:
        """The hub's UDP port (0 before its first message)."""
        info = self._first_info()
        return 0 if info is None else info.address[1]

    def address(self) -> tuple[str, int]:
        """``(group, port)`` the (first) hub receives."""
        return (self.group, self.port)

    def exposure(self) -> str:
        """Who can send data to the (first) hub, from its messages."""
        info = self._first_info()
        return f"viewer of {', '.join(self.hubs)} (no update yet)" if info is None else info.exposure

    # ------------------------------------------------------------------ liveness
    @property
    def connected(self) -> bool:
        """Every hub sent a state within 2 of its refresh intervals."""
        now = time.monotonic()
        return all(link.connected(now) for link in self.links.values())

    @property
    def seconds_since_update(self) -> float | None:
        """Seconds since the stalest hub's last state (None before any state)."""
        now = time.monotonic()
        values = [s for s in (link.seconds_since_update(now) for link in self.links.values()) if s is not None]
        return max(values) if values else None

    @property
    def plot_delay(self) -> float | None:
        """The largest of the hubs' plot delays (see :class:`HubLink`); None before any."""
        values = [link.plot_delay for link in self.links.values() if link.plot_delay is not None]
        return max(values) if values else None

    @property
    def missed_updates(self) -> int:
        """Gaps in the hubs' state sequences."""
        return sum(link.missed_updates for link in self.links.values())

    @property
    def hub_restarts(self) -> int:
        """Hub restarts seen (identity changes)."""
        return sum(link.hub_restarts for link in self.links.values())

    @property
    def malformed_messages(self) -> int:
        """Messages from the hubs that could not be read."""
        return sum(link.malformed_messages for link in self.links.values())

    @property
    def missed_record_batches(self) -> int:
        """Relayed record batches missed (sequence gaps and the viewer's own drops)."""
        return sum(link.missed_record_batches for link in self.links.values())

    # ------------------------------------------------------------------ commands
    @property
    def has_token(self) -> bool:
        """True when every hub's token was given (commands possible)."""
        return all(link.token for link in self.links.values())

    def command(self, name: str, *, hub: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Send a command to every hub (or to ``hub``); returns the reply.

        For one hub, its reply (``{"ok": True, ...}``); for several,
        ``{"ok": True, "command": name, "replies": {url: reply}}``: the hubs
        are asked in order, and the first refusal raises (the hubs before it
        have acted). Each call uses a fresh REQ socket, so any thread may
        call it.

        Raises
        ------
        PermissionError
            When the token of a hub is missing ("ping" needs none).
        HubCommandError
            When a hub refuses the command or does not answer in time.
        """
        urls = self.hubs if hub is None else [hub]
        for url in urls:
            if name != "ping" and not self.links[url].token:
                msg = f"no token for hub {url}: give token= (the hub prints it on its 'token' line) to send {name!r}"
                raise PermissionError(msg)
        replies = {url: self._command_one(self.links[url], name, timeout) for url in urls}
        if len(urls) == 1:
            return replies[urls[0]]
        return {"ok": True, "command": name, "replies": replies}

    def _command_one(self, link: HubLink, name: str, timeout: float | None) -> dict[str, Any]:
        request: dict[str, Any] = {"command": name}
        if link.token:
            request["token"] = link.token
        reply = request_command(link.command_url, request, self.command_timeout if timeout is None else timeout)
        if reply.get("ok") is not True:
            msg = f"hub {link.url} refused {name!r}: {reply.get('error', 'no reason given')}"
            raise HubCommandError(msg)
        return reply

    def reset(self, also: Callable[[], None] | None = None) -> None:
        """Reset the hub(s) (needs the token), then the viewer's own counts and ``also()``."""
        self.command("reset")
        with self._processing_lock:
            self.decoder.reset()
            self.local_readouts = 0
            self.local_hits = 0
            self._errors = 0
            self._last_error = ""
            if also is not None:
                also()

    def start_hub(self) -> dict[str, Any]:
        """Have the hub(s) start receiving."""
        return self.command("start")

    def stop_hub(self) -> dict[str, Any]:
        """Have the hub(s) stop receiving (they keep publishing their state)."""
        return self.command("stop")

    # ------------------------------------------------------------------ relayed records
    def decode_readout(self, readout: AbstractAstroPixReadout) -> list[Any]:
        """Decode one relayed readout with the viewer's own decoder (chaining split hits)."""
        return self.decoder.decode_readout(readout)

    def process_records(self, records: Sequence[bytes]) -> None:
        """Decode relayed records locally and count them (``local_readouts``, ``local_hits``).

        The viewer's histograms are the hub's: nothing is filled.
        """
        before = self.decoder.num_readouts
        hits = self.decoder.decode(list(records))
        self.count_processed(self.decoder.num_readouts - before, len(hits))

    def accumulate(self, hits: Any) -> None:
        """Nothing: a viewer's histograms are the hub's (filling them here would count hits twice)."""

    def count_processed(self, readouts: int, hits: int) -> None:
        """Add to the viewer's local counts of relayed readouts and hits."""
        self.local_readouts += int(readouts)
        self.local_hits += int(hits)

    def replay(self, records: Iterable[bytes], *, refresh: bool = True) -> None:
        """Not possible on a viewer: raises ``NotImplementedError`` (the signature is ``MonitorEngine.replay``'s)."""
        msg = "a viewer of a hub cannot replay records: replay them on a local monitor (or the hub's own engine)"
        raise NotImplementedError(msg)

    # ------------------------------------------------------------------ errors
    def note_error(self, exc: BaseException) -> None:
        """Count an exception caught in ``process`` or a callback (logged, rate-limited)."""
        self._errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        if _log_limited(self._errors):
            logger.error("%r: %s (error %d)", self, self._last_error, self._errors, exc_info=exc)

    @property
    def error_count(self) -> int:
        """Exceptions caught in ``process`` and the callbacks."""
        return self._errors

    @property
    def last_error(self) -> str:
        """The last of them, as ``"Type: message"`` (``""`` if none)."""
        return self._last_error
