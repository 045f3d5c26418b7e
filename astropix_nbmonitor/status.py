"""The monitor's counters: one table, the single source of every figure shown.

Each row of :data:`STATUS_TABLE` names a counter, says how to read it from the
engine's sources, how to label it, whether a non-zero value is bad, and which
traitlet of a monitor widget mirrors it. The traitlets, the dashboard, the
``watch`` command and the hub all read :class:`Status` objects made from this
table, so adding a counter is adding one row here.

A :class:`Status` is a read-only mapping from counter name to value::

    >>> st = engine.status()                               # doctest: +SKIP
    >>> st["lost"], st.label("lost"), st.is_bad("lost")    # doctest: +SKIP
    (3, 'lost readouts', True)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .fmt import FLAG_NAMES
from .record import MALFORMED_REASONS

__all__ = [
    "STATUS_TABLE",
    "Counter",
    "Status",
    "StatusRow",
    "StatusSources",
    "format_value",
]

#: Decoding flags that mean a hit was lost or the bytes could not be read
#: (the two others, a matched orphan and valid extra bytes, are the normal
#: life of a hit split across two readouts).
_BAD_FLAGS = frozenset(
    {
        "ORPHAN_BYTES_DROPPED",
        "ORPHAN_BYTES_NOT_USED",
        "INVALID_EXTRA_BYTES",
        "INCOMPLETE_HIT_DROPPED",
        "NOT_ALL_BYTES_VISITED",
        "UNKNOWN_FATAL_ERROR",
    }
)


@dataclasses.dataclass(frozen=True)
class StatusSources:
    """What the counters are read from, at one moment (built by the engine).

    Attributes
    ----------
    listener : ListenerStats
        The listener's counters (:class:`~astropix_nbmonitor.listener.ListenerStats`).
    decoder : object
        The decoder (``num_recovered``, ``num_empty``, ``flag_counts``...).
    readouts, hits : int
        Readouts and hits processed.
    readout_rate, hit_rate : float
        Rates over the last refresh (1/s).
    out_of_matrix : int
        Decoded hits outside the chip's matrix.
    errors : int
        Exceptions caught on the processing path.
    uptime : float
        Seconds spent running since creation or the last reset.
    """

    listener: Any
    decoder: Any
    readouts: int = 0
    hits: int = 0
    readout_rate: float = 0.0
    hit_rate: float = 0.0
    out_of_matrix: int = 0
    errors: int = 0
    uptime: float = 0.0


@dataclasses.dataclass(frozen=True)
class Counter:
    """One row of the status table: how to read, label and judge a counter.

    Attributes
    ----------
    name : str
        Key of the counter in a :class:`Status` (and in the hub's messages).
    label : str
        Words for people (dashboard, terminal).
    read : callable
        ``read(sources) -> value`` from a :class:`StatusSources`.
    bad : bool
        True when a non-zero value means something went wrong.
    trait : str or None
        Name of the monitor traitlet that mirrors it (None: no traitlet).
    kind : str
        ``"count"`` (int), ``"rate"`` (float, 1/s), ``"seconds"`` (float) or
        ``"time"`` (``time.time()`` or None).
    """

    name: str
    label: str
    read: Callable[[StatusSources], Any]
    bad: bool = False
    trait: str | None = None
    kind: str = "count"


def _flag_counter(bit: int, name: str) -> Counter:
    return Counter(
        f"flag_{name.lower()}",
        f"readouts flagged {name}",
        lambda s: int(s.decoder.flag_counts[bit]),
        bad=name in _BAD_FLAGS,
    )


def _malformed_counter(reason: str) -> Counter:
    return Counter(
        f"malformed_{reason}",
        f"malformed: {reason}",
        lambda s: int(s.listener.malformed_by_reason.get(reason, 0)),
        bad=True,
    )


#: The counters, in the order they are shown.
STATUS_TABLE: tuple[Counter, ...] = (
    Counter("readouts", "readouts processed", lambda s: int(s.readouts), trait="num_readouts"),
    Counter("hits", "hits decoded", lambda s: int(s.hits), trait="num_hits"),
    Counter("readout_rate", "readouts/s", lambda s: float(s.readout_rate), trait="readout_rate", kind="rate"),
    Counter("hit_rate", "hits/s", lambda s: float(s.hit_rate), trait="hit_rate", kind="rate"),
    Counter("lost", "lost readouts", lambda s: int(s.listener.lost), bad=True, trait="lost_readouts"),
    Counter("malformed", "malformed datagrams", lambda s: int(s.listener.malformed), bad=True, trait="malformed_packets"),
    *(_malformed_counter(reason) for reason in MALFORMED_REASONS),
    Counter("oversize", "oversize records", lambda s: int(s.listener.oversize), bad=True, trait="oversize_records"),
    Counter("dropped", "dropped readouts", lambda s: int(s.listener.dropped), bad=True, trait="dropped_readouts"),
    Counter("out_of_order", "out of order", lambda s: int(s.listener.out_of_order), bad=True, trait="out_of_order"),
    Counter("daq_restarts", "DAQ restarts", lambda s: int(s.listener.restarts), trait="daq_restarts"),
    Counter(
        "missed_while_stopped",
        "missed while stopped",
        lambda s: int(s.listener.missed_while_stopped),
        trait="missed_while_stopped",
    ),
    Counter("recovered_hits", "recovered split hits", lambda s: int(s.decoder.num_recovered), trait="recovered_hits"),
    Counter("out_of_matrix", "out-of-matrix hits", lambda s: int(s.out_of_matrix), bad=True),
    Counter("empty_readouts", "empty readouts", lambda s: int(s.decoder.num_empty), trait="empty_readouts"),
    *(_flag_counter(bit, name) for bit, name in enumerate(FLAG_NAMES)),
    Counter("errors", "processing errors", lambda s: int(s.errors), bad=True),
    Counter("buffered", "waiting to be processed", lambda s: int(s.listener.buffered)),
    Counter("uptime", "uptime", lambda s: float(s.uptime), kind="seconds"),
    Counter("last_datagram", "last datagram", lambda s: s.listener.last_datagram_time, kind="time"),
)


def format_value(value: Any, kind: str = "count") -> str:
    """A counter's value as shown everywhere: one thousands-separator style.

    Counts as ``12,345``, rates as ``1,234.5``, durations as ``h:mm:ss``,
    times as the local ``HH:MM:SS`` (``never`` for None).
    """
    if kind == "time":
        return "never" if value is None else time.strftime("%H:%M:%S", time.localtime(value))
    if kind == "seconds":
        whole = int(value)
        return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
    if kind == "rate":
        return f"{float(value):,.1f}"
    return f"{int(value):,}"


@dataclasses.dataclass(frozen=True)
class StatusRow:
    """One counter's value in a :class:`Status`.

    ``bad`` is True when the value is non-zero and a non-zero value is bad.
    """

    name: str
    value: Any
    label: str
    bad: bool
    kind: str = "count"
    bad_if_nonzero: bool = False

    @property
    def text(self) -> str:
        """The value, formatted (see :func:`format_value`)."""
        return format_value(self.value, self.kind)


class Status(Mapping[str, Any]):
    """The counters at one moment: a read-only mapping name -> value.

    Built by :meth:`MonitorEngine.status() <astropix_nbmonitor.engine.MonitorEngine.status>`
    from :data:`STATUS_TABLE`; ``rows`` keeps the table's order, labels and
    judgement, ``taken_at`` the ``time.time()`` it was read.
    """

    def __init__(self, rows: tuple[StatusRow, ...], taken_at: float | None = None) -> None:
        self.rows = tuple(rows)
        self.taken_at = time.time() if taken_at is None else float(taken_at)
        self._by_name = {row.name: row for row in self.rows}

    @classmethod
    def read(cls, sources: StatusSources, table: tuple[Counter, ...] = STATUS_TABLE) -> Status:
        """Read every counter of ``table`` from ``sources``."""
        rows = []
        for counter in table:
            value = counter.read(sources)
            rows.append(
                StatusRow(counter.name, value, counter.label, bool(counter.bad and value), counter.kind, counter.bad)
            )
        return cls(tuple(rows))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], taken_at: float | None = None) -> Status:
        """A status from plain values (e.g. a hub's message), judged by :data:`STATUS_TABLE`.

        Names the table does not know are kept, labelled by their name and never bad.
        """
        known = {c.name: c for c in STATUS_TABLE}
        rows = []
        for name, value in values.items():
            counter = known.get(name)
            if counter is None:
                rows.append(StatusRow(name, value, name, False))
            else:
                rows.append(StatusRow(name, value, counter.label, bool(counter.bad and value), counter.kind, counter.bad))
        return cls(tuple(rows), taken_at)

    # -- Mapping ------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        return self._by_name[name].value

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    # -- rows -----------------------------------------------------------------------
    def row(self, name: str) -> StatusRow:
        """The whole row of counter ``name``."""
        return self._by_name[name]

    def label(self, name: str) -> str:
        """The label of counter ``name``."""
        return self._by_name[name].label

    def is_bad(self, name: str) -> bool:
        """True when counter ``name`` is non-zero and a non-zero value is bad."""
        return self._by_name[name].bad

    def text(self, name: str) -> str:
        """The formatted value of counter ``name``."""
        return self._by_name[name].text

    def bad_rows(self) -> tuple[StatusRow, ...]:
        """The rows whose value is bad now."""
        return tuple(row for row in self.rows if row.bad)

    def flag_counts(self) -> dict[str, int]:
        """Readouts per decoding flag, by flag name (zeros included)."""
        return {name: int(self.get(f"flag_{name.lower()}", 0)) for name in FLAG_NAMES}

    def as_dict(self) -> dict[str, Any]:
        """Plain ``{name: value}`` (JSON-friendly)."""
        return {row.name: row.value for row in self.rows}

    # -- text views -------------------------------------------------------------------
    def text_block(self) -> list[str]:
        """The table as aligned ``label  value`` lines; bad values marked ``!``."""
        width = max((len(row.label) for row in self.rows), default=0)
        lines = []
        for row in self.rows:
            mark = " !" if row.bad else ""
            lines.append(f"{row.label:<{width}}  {row.text}{mark}")
        return lines

    def one_line(self) -> str:
        """One compact line: readouts, hits, rates, uptime, and every bad counter."""
        parts = [
            f"{self.text('readouts')} readouts",
            f"{self.text('hits')} hits",
            f"{self.text('readout_rate')} readouts/s",
            f"{self.text('hit_rate')} hits/s",
            f"up {self.text('uptime')}",
        ]
        parts.extend(f"{row.label} {row.text}!" for row in self.bad_rows())
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"Status({self.one_line()})"
