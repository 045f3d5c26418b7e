"""Latched alarms over the status table: what a shift must be told even when looking away.

An :class:`AlarmBook` holds rules and evaluates them at every refresh
(:meth:`AlarmBook.evaluate` with the engine's :class:`~astropix_nbmonitor.status.Status`).
The default rules:

===============  ==============================================================
``no_data``      while running, no datagram for 5 s (from ``last_datagram``, or
                 from the start of running when none arrived since)
``lost``         lost readouts above 0.1% of the readouts of the last 10 s
                 (lost / (processed + lost + dropped), counter differences)
``malformed``    any malformed datagram in the last 10 s
``dropped``      any readout dropped (processing fell behind) in the last 10 s
``noisy``        a pixel found noisy that was not noisy before
``rate_drop``    while running, the hit rate of the last 5 s (mean of the
                 refreshes) below half the mean of the 60 s before them
                 (judged once those 60 s hold at least 30 s of refreshes)
===============  ==============================================================

An external rule (:meth:`AlarmBook.add_external`) holds while the caller
says so (:meth:`AlarmBook.set_condition`): the monitor's reference-run
compatibility turning red is one.

A custom rule (:meth:`AlarmBook.add`) watches any counter of the status table,
by its value (``"lost"``, ``"hit_rate"``) or by its **rate of change** per
second, named with a ``/s`` suffix (``"lost/s"``: the counter's increase since
the previous evaluation divided by the seconds between them), and fires when
the value is above ``above`` or below ``below`` for at least ``for_seconds``.

An alarm is **latched**: once fired it stays in :attr:`AlarmBook.alarms` (with
the time it first fired, the last time its condition held and how many times
it fired) until acknowledged, even after its condition cleared (``active``
False then). :meth:`AlarmBook.acknowledge` removes a cleared alarm at once; an
alarm acknowledged while its condition holds is kept, marked
``acknowledged``, until the condition clears. Firing after that makes a new
latch. Each latch is logged once, with ``logger.warning``, when it is made.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Union

from .noisy import NoisyPixel
from .status import STATUS_TABLE, Status

__all__ = ["AlarmBook", "DEFAULT_RULES"]

logger = logging.getLogger(__name__)

#: Names of the default rules, in evaluation order.
DEFAULT_RULES = ("no_data", "lost", "malformed", "dropped", "noisy", "rate_drop")

_RATE_SUFFIX = "/s"
_KNOWN = {c.name: c for c in STATUS_TABLE}
_NUMERIC_KINDS = ("count", "rate", "seconds")

NoisyInput = Union[int, Iterable[Union[NoisyPixel, tuple[int, int, int]]], None]


# ---------------------------------------------------------------------------
# What the rules read
# ---------------------------------------------------------------------------


class _History:
    """Recent values of some counters, ``(time, {name: value})``, kept for ``keep`` seconds."""

    def __init__(self, keep: float, max_samples: int = 100_000) -> None:
        self.keep = float(keep)
        self._samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=max_samples)

    def add(self, now: float, values: dict[str, float]) -> None:
        """Add a sample; a counter that went down (a reset) forgets the older samples."""
        if self._samples:
            last = self._samples[-1][1]
            if any(values[k] < last[k] for k in values if k in last and _is_counter(k)):
                self._samples.clear()
        self._samples.append((now, values))
        while self._samples and now - self._samples[0][0] > self.keep:
            self._samples.popleft()

    def clear(self) -> None:
        self._samples.clear()

    def increase(self, name: str, seconds: float) -> float:
        """How much counter ``name`` grew over the last ``seconds`` (from the oldest sample inside them)."""
        if not self._samples:
            return 0.0
        now, newest = self._samples[-1]
        base = next((v for t, v in self._samples if t >= now - seconds), newest)
        return float(newest.get(name, 0.0) - base.get(name, 0.0))

    def rate_of_change(self, name: str) -> float | None:
        """Counter ``name``'s increase per second since the previous sample (None without one)."""
        if len(self._samples) < 2:
            return None
        (t0, v0), (t1, v1) = self._samples[-2], self._samples[-1]
        if t1 <= t0 or name not in v0 or name not in v1:
            return None
        return (v1[name] - v0[name]) / (t1 - t0)

    def values_between(self, name: str, start: float, end: float) -> list[tuple[float, float]]:
        """``(time, value)`` of ``name`` for samples with ``start <= time < end``."""
        return [(t, v[name]) for t, v in self._samples if start <= t < end and name in v]


def _is_counter(name: str) -> bool:
    counter = _KNOWN.get(name)
    return counter is not None and counter.kind == "count"


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every rule sees at one evaluation."""

    status: Status
    now: float
    running: bool
    running_since: float | None
    history: _History
    new_noisy: tuple[tuple[int, int, int], ...]
    values: dict[str, float]


# ---------------------------------------------------------------------------
# Rules: check(ctx) -> message when the condition holds, else None
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Rule:
    name: str
    for_seconds: float = 0.0

    def counters(self) -> tuple[str, ...]:
        """Counters the rule needs in the history."""
        return ()

    def check(self, ctx: _Context) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclasses.dataclass
class _NoData(_Rule):
    seconds: float = 5.0

    def check(self, ctx: _Context) -> str | None:
        if not ctx.running or ctx.running_since is None:
            return None
        last = ctx.status.get("last_datagram")
        since = ctx.running_since if last is None else max(float(last), ctx.running_since)
        quiet = ctx.now - since
        if quiet < self.seconds:
            return None
        what = "since the monitor started" if last is None else f"for {quiet:.0f} s"
        return f"no data {what}"


@dataclasses.dataclass
class _LostFraction(_Rule):
    fraction: float = 0.001
    window: float = 10.0

    def counters(self) -> tuple[str, ...]:
        return ("lost", "readouts", "dropped")

    def check(self, ctx: _Context) -> str | None:
        lost = ctx.history.increase("lost", self.window)
        total = lost + ctx.history.increase("readouts", self.window) + ctx.history.increase("dropped", self.window)
        if lost <= 0 or lost <= self.fraction * total:
            return None
        return f"{lost:,.0f} readouts lost in the last {self.window:g} s ({100 * lost / total:.2g}% of {total:,.0f})"


@dataclasses.dataclass
class _AnyIncrease(_Rule):
    counter: str = ""
    words: str = ""
    window: float = 10.0

    def counters(self) -> tuple[str, ...]:
        return (self.counter,)

    def check(self, ctx: _Context) -> str | None:
        more = ctx.history.increase(self.counter, self.window)
        if more <= 0:
            return None
        return f"{more:,.0f} {self.words} in the last {self.window:g} s"


@dataclasses.dataclass
class _NewNoisy(_Rule):
    def check(self, ctx: _Context) -> str | None:
        if not ctx.new_noisy:
            return None
        if ctx.new_noisy[0][0] < 0:
            return "more noisy pixels than before"
        where = ", ".join(f"chip {k} column {c} row {r}" for k, c, r in ctx.new_noisy[:5])
        more = f" and {len(ctx.new_noisy) - 5} more" if len(ctx.new_noisy) > 5 else ""
        return f"new noisy pixel: {where}{more}"


@dataclasses.dataclass
class _RateDrop(_Rule):
    fraction: float = 0.5
    recent: float = 5.0
    reference: float = 60.0
    min_reference: float = 30.0

    def counters(self) -> tuple[str, ...]:
        return ("hit_rate",)

    def check(self, ctx: _Context) -> str | None:
        if not ctx.running:
            return None
        split = ctx.now - self.recent
        recent = ctx.history.values_between("hit_rate", split, float("inf"))
        before = ctx.history.values_between("hit_rate", split - self.reference, split)
        if not recent or not before or before[-1][0] - before[0][0] < self.min_reference:
            return None
        now_rate = sum(v for _, v in recent) / len(recent)
        ref_rate = sum(v for _, v in before) / len(before)
        if ref_rate <= 0 or now_rate >= self.fraction * ref_rate:
            return None
        return f"hit rate {now_rate:,.1f}/s, below {self.fraction:g} x the previous minute's {ref_rate:,.1f}/s"


@dataclasses.dataclass
class _Threshold(_Rule):
    counter: str = ""
    above: float | None = None
    below: float | None = None

    @property
    def base(self) -> str:
        return self.counter[: -len(_RATE_SUFFIX)] if self.counter.endswith(_RATE_SUFFIX) else self.counter

    def counters(self) -> tuple[str, ...]:
        return (self.base,)

    def value(self, ctx: _Context) -> float | None:
        if self.counter.endswith(_RATE_SUFFIX):
            return ctx.history.rate_of_change(self.base)
        return ctx.values.get(self.counter)

    def check(self, ctx: _Context) -> str | None:
        value = self.value(ctx)
        if value is None:
            return None
        if self.above is not None and value > self.above:
            return f"{self.counter} = {value:,.4g}, above {self.above:,.4g}"
        if self.below is not None and value < self.below:
            return f"{self.counter} = {value:,.4g}, below {self.below:,.4g}"
        return None


@dataclasses.dataclass
class _External(_Rule):
    """A condition judged by the caller (e.g. the reference run's compatibility): its message, or None."""

    message: str | None = None

    def check(self, ctx: _Context) -> str | None:
        return self.message


def _default_rules() -> list[_Rule]:
    return [
        _NoData("no_data"),
        _LostFraction("lost"),
        _AnyIncrease("malformed", counter="malformed", words="malformed datagrams"),
        _AnyIncrease("dropped", counter="dropped", words="readouts dropped (processing fell behind)"),
        _NewNoisy("noisy"),
        _RateDrop("rate_drop"),
    ]


# ---------------------------------------------------------------------------
# Latches and the book
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Latch:
    name: str
    message: str
    first: float
    last: float
    count: int = 1
    active: bool = True
    acknowledged: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class AlarmBook:
    """Alarm rules over the status table, evaluated at every refresh, with latched alarms.

    Parameters
    ----------
    defaults : bool
        Start with the default rules (:data:`DEFAULT_RULES`, see the module).
    history_seconds : float
        How long counter samples are kept (at least the longest rule window:
        the rate-drop rule needs 65 s).

    Notes
    -----
    Not thread-safe: evaluate, add and acknowledge from one thread (the
    engine's refresh callbacks run on the processing thread; a widget's
    button handler should hand the acknowledgement over, or hold the engine's
    lock).
    """

    def __init__(self, *, defaults: bool = True, history_seconds: float = 70.0) -> None:
        self._rules: dict[str, _Rule] = {}
        self._latches: dict[str, _Latch] = {}
        self._true_since: dict[str, float] = {}
        self._history = _History(history_seconds)
        self._running_since: float | None = None
        self._noisy_seen: set[tuple[int, int, int]] = set()
        self._noisy_max = 0
        for rule in _default_rules() if defaults else []:
            self._rules[rule.name] = rule

    # ------------------------------------------------------------------ rules
    @property
    def rules(self) -> tuple[str, ...]:
        """Names of the rules, in evaluation order."""
        return tuple(self._rules)

    def add(
        self,
        name: str,
        counter_or_rate: str,
        above: float | None = None,
        below: float | None = None,
        for_seconds: float = 0.0,
    ) -> None:
        """Add a rule on a counter of the status table, or on its rate of change (``"name/s"``).

        The alarm fires when the value is above ``above`` or below ``below``
        (at least one is needed) for ``for_seconds`` or longer.
        """
        if name in self._rules:
            msg = f"an alarm rule named {name!r} exists already"
            raise ValueError(msg)
        if above is None and below is None:
            msg = f"alarm {name!r}: give above=, below= or both"
            raise ValueError(msg)
        if not for_seconds >= 0:
            msg = f"for_seconds must be >= 0, got {for_seconds!r}"
            raise ValueError(msg)
        rule = _Threshold(name, float(for_seconds), counter=str(counter_or_rate), above=above, below=below)
        counter = _KNOWN.get(rule.base)
        if counter is None or counter.kind not in _NUMERIC_KINDS:
            known = ", ".join(c.name for c in STATUS_TABLE if c.kind in _NUMERIC_KINDS)
            msg = f"unknown counter {rule.base!r} (append /s for its rate of change); counters: {known}"
            raise ValueError(msg)
        self._rules[name] = rule

    def add_external(self, name: str) -> None:
        """Add a rule whose condition the caller sets with :meth:`set_condition` (judged at each evaluation)."""
        if name in self._rules:
            msg = f"an alarm rule named {name!r} exists already"
            raise ValueError(msg)
        self._rules[name] = _External(name)

    def set_condition(self, name: str, message: str | None) -> None:
        """Set the condition of an external rule: a message while it holds, None when it does not."""
        rule = self._rules.get(name)
        if not isinstance(rule, _External):
            msg = f"{name!r} is not an external alarm rule (add it with add_external)"
            raise ValueError(msg)
        rule.message = message

    def remove(self, name: str) -> None:
        """Remove a rule and its latch."""
        self._check_name(name)
        del self._rules[name]
        self._latches.pop(name, None)
        self._true_since.pop(name, None)

    def _check_name(self, name: str) -> None:
        if name not in self._rules:
            msg = f"no alarm rule named {name!r}; rules: {', '.join(self._rules)}"
            raise ValueError(msg)

    # ------------------------------------------------------------------ evaluate
    def evaluate(
        self,
        status: Status,
        *,
        now: float | None = None,
        running: bool | None = None,
        rates: Mapping[str, float] | None = None,
        noisy: NoisyInput = None,
    ) -> list[str]:
        """Evaluate every rule; returns the names of the alarms newly latched.

        Parameters
        ----------
        status : Status
            The counters now (``engine.status()``).
        now : float, optional
            The time of the evaluation (default ``status.taken_at``).
        running : bool, optional
            Whether the monitor runs (default ``status["running"]`` when present,
            else True); the no-data and rate-drop rules hold only while running.
        rates : mapping, optional
            Values that replace the status's own, e.g. ``{"hit_rate": ...}``
            measured by the caller over another interval.
        noisy : int or iterable, optional
            The pixels found noisy now (NoisyPixel items or ``(chip_id, column,
            row)`` tuples: one not seen noisy before fires ``noisy``), or their
            number (a number larger than any before fires it).
        """
        now = status.taken_at if now is None else float(now)
        running = bool(status.get("running", True)) if running is None else bool(running)
        self._note_running(running, now)
        values = self._sample(status, rates)
        self._history.add(now, values)
        ctx = _Context(status, now, running, self._running_since, self._history, self._new_noisy(noisy), values)
        fired = []
        for rule in self._rules.values():
            message = rule.check(ctx)
            if self._held(rule, message is not None, now) and self._latch(rule.name, message or "", now):
                fired.append(rule.name)
            elif message is None:
                self._clear(rule.name)
        return fired

    def _note_running(self, running: bool, now: float) -> None:
        if not running:
            self._running_since = None
        elif self._running_since is None:
            self._running_since = now

    def _sample(self, status: Status, rates: Mapping[str, float] | None) -> dict[str, float]:
        """The values of the counters the rules need."""
        names = {n for rule in self._rules.values() for n in rule.counters()}
        values = {n: float(status[n]) for n in names if status.get(n) is not None}
        for name, value in (rates or {}).items():
            if name in names:
                values[name] = float(value)
        return values

    def _new_noisy(self, noisy: NoisyInput) -> tuple[tuple[int, int, int], ...]:
        """Noisy pixels not seen before (a count larger than before: one placeholder)."""
        if noisy is None:
            return ()
        if isinstance(noisy, int):
            grew = noisy > self._noisy_max
            self._noisy_max = max(self._noisy_max, noisy)
            return ((-1, -1, -1),) if grew else ()
        pixels = [p.pixel if isinstance(p, NoisyPixel) else tuple(int(v) for v in p) for p in noisy]
        new = tuple(p for p in pixels if p not in self._noisy_seen)
        self._noisy_seen.update(pixels)  # type: ignore[arg-type]
        return new  # type: ignore[return-value]

    def _held(self, rule: _Rule, condition: bool, now: float) -> bool:
        """True when the condition has held for the rule's ``for_seconds``."""
        if not condition:
            self._true_since.pop(rule.name, None)
            return False
        since = self._true_since.setdefault(rule.name, now)
        return now - since >= rule.for_seconds

    def _latch(self, name: str, message: str, now: float) -> bool:
        """Record a firing; True when it makes a new latch."""
        latch = self._latches.get(name)
        if latch is None:
            self._latches[name] = _Latch(name, message, now, now)
            logger.warning("alarm %s: %s", name, message)
            return True
        if not latch.active:
            latch.count += 1
        latch.active, latch.last, latch.message = True, now, message
        return False

    def _clear(self, name: str) -> None:
        """The condition does not hold (now): an acknowledged latch goes, another stays inactive."""
        latch = self._latches.get(name)
        if latch is None:
            return
        if latch.acknowledged:
            del self._latches[name]
        else:
            latch.active = False

    # ------------------------------------------------------------------ latches
    @property
    def alarms(self) -> list[dict[str, Any]]:
        """The latched alarms, oldest first: dicts of name, message, first, last, count, active, acknowledged."""
        return [latch.as_dict() for latch in sorted(self._latches.values(), key=lambda a: (a.first, a.name))]

    def acknowledge(self, name: str | None = None) -> int:
        """Acknowledge one alarm (None: all); returns how many were acknowledged.

        A cleared alarm goes at once; one whose condition still holds stays,
        marked acknowledged, until it clears.
        """
        if name is not None:
            self._check_name(name)
        names = [n for n in self._latches if name is None or n == name]
        for n in names:
            latch = self._latches[n]
            if latch.active:
                latch.acknowledged = True
            else:
                del self._latches[n]
        return len(names)

    def reset(self) -> None:
        """Forget every latch, the counter history and the noisy pixels seen (the rules stay)."""
        self._latches.clear()
        self._true_since.clear()
        self._history.clear()
        self._running_since = None
        self._noisy_seen.clear()
        self._noisy_max = 0
