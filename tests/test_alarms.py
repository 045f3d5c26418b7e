"""Latched alarms: each default alarm fires on its fault, stays latched, clears on acknowledge."""

from __future__ import annotations

import logging

import pytest

from astropix_nbmonitor.alarms import DEFAULT_RULES, AlarmBook
from astropix_nbmonitor.noisy import NoisyPixel
from astropix_nbmonitor.status import Status

T0 = 1_753_255_536.0


class _Run:
    """A fake run: counters that a test moves on, read as Status objects at a fake clock."""

    def __init__(self, book: AlarmBook) -> None:
        self.book = book
        self.t = T0
        self.values = {
            "readouts": 0,
            "hits": 0,
            "readout_rate": 0.0,
            "hit_rate": 0.0,
            "lost": 0,
            "malformed": 0,
            "dropped": 0,
            "last_datagram": None,
        }

    def step(self, seconds: float = 0.5, *, readouts_per_s: float = 1000.0, hits_per_s: float | None = None,
             running: bool = True, data: bool = True, noisy=None, **more: int) -> list[str]:
        """``seconds`` pass at these rates (counters in ``more`` grow by that much); evaluate."""
        self.t += seconds
        hits_per_s = 2 * readouts_per_s if hits_per_s is None else hits_per_s
        if running and data:
            self.values["readouts"] += round(readouts_per_s * seconds)
            self.values["hits"] += round(hits_per_s * seconds)
            self.values["readout_rate"], self.values["hit_rate"] = readouts_per_s, hits_per_s
            self.values["last_datagram"] = self.t
        else:
            self.values["readout_rate"] = self.values["hit_rate"] = 0.0
        for name, n in more.items():
            self.values[name] += n
        status = Status.from_dict(self.values, taken_at=self.t)
        return self.book.evaluate(status, now=self.t, running=running, noisy=noisy)

    def run(self, seconds: float, **kwargs) -> list[str]:
        fired = []
        for _ in range(round(seconds / 0.5)):
            fired += self.step(**kwargs)
        return fired


def _names(book: AlarmBook) -> list[str]:
    return [a["name"] for a in book.alarms]


def _latched_then_acknowledged(run: _Run, name: str) -> None:
    """The alarm stays latched (inactive) once its fault cleared, and goes on acknowledge."""
    run.run(5.0)
    (alarm,) = [a for a in run.book.alarms if a["name"] == name]
    assert alarm["active"] is False and alarm["acknowledged"] is False and alarm["count"] == 1
    assert run.book.acknowledge(name) == 1
    assert name not in _names(run.book)


def test_a_clean_run_raises_no_alarm():
    run = _Run(AlarmBook())
    assert run.run(120.0) == [] and run.book.alarms == []
    assert run.book.rules == DEFAULT_RULES


def test_no_data_for_5_s_while_running(caplog):
    run = _Run(AlarmBook())
    run.run(10.0)
    with caplog.at_level(logging.WARNING, logger="astropix_nbmonitor.alarms"):
        assert run.run(4.5, data=False) == []
        assert run.step(data=False) == ["no_data"]
        run.run(3.0, data=False)
    (alarm,) = run.book.alarms
    assert alarm["name"] == "no_data" and alarm["active"] and alarm["first"] == T0 + 15.0
    assert alarm["last"] == T0 + 18.0 and alarm["message"] == "no data for 8 s"
    assert [r.message for r in caplog.records] == ["alarm no_data: no data for 5 s"]  # logged once
    _latched_then_acknowledged(run, "no_data")


def test_no_data_since_the_start_and_never_while_stopped():
    run = _Run(AlarmBook())
    assert run.run(30.0, running=False) == []
    assert run.run(5.0, data=False) == []  # seen running from the first evaluation, at 30.5 s
    assert run.step(data=False) == ["no_data"]
    assert run.book.alarms[0]["message"] == "no data since the monitor started"


def test_lost_readouts_above_a_tenth_of_a_percent_of_the_last_10_s():
    run = _Run(AlarmBook())
    run.run(20.0)
    assert run.step(lost=5) == []  # 5 of about 10,000 in 10 s: 0.05%
    assert run.step(lost=6) == ["lost"]  # 11 of 10,011: 0.11%
    assert "11 readouts lost in the last 10 s" in run.book.alarms[0]["message"]
    run.run(5.0)
    assert run.book.alarms[0]["active"]  # still within the 10 s
    run.run(6.0)
    assert not run.book.alarms[0]["active"]
    _latched_then_acknowledged(run, "lost")


@pytest.mark.parametrize("counter", ["malformed", "dropped"])
def test_any_malformed_or_dropped_datagram_in_the_last_10_s(counter):
    run = _Run(AlarmBook())
    run.run(10.0)
    assert run.step(**{counter: 1}) == [counter]
    assert run.book.alarms[0]["message"].startswith("1 ")
    run.run(10.5)
    assert not run.book.alarms[0]["active"]
    _latched_then_acknowledged(run, counter)


def test_a_new_noisy_pixel():
    run = _Run(AlarmBook())
    first = [NoisyPixel(0, 3, 4, 100, 10.0)]
    assert run.step(noisy=[]) == []
    assert run.step(noisy=first) == ["noisy"]
    assert run.book.alarms[0]["message"] == "new noisy pixel: chip 0 column 3 row 4"
    assert run.step(noisy=first) == [] and run.book.alarms[0]["active"] is False  # not new any more
    _latched_then_acknowledged(run, "noisy")
    run.step(noisy=first)
    assert run.book.alarms == []  # still the same pixel: nothing new
    assert run.step(noisy=[*first, (1, 5, 6)]) == ["noisy"]
    assert "chip 1 column 5 row 6" in run.book.alarms[0]["message"]
    book = AlarmBook()  # a count of noisy pixels also works
    assert book.evaluate(Status.from_dict({}), now=T0, noisy=0) == []
    assert book.evaluate(Status.from_dict({}), now=T0 + 1, noisy=2) == ["noisy"]
    assert book.evaluate(Status.from_dict({}), now=T0 + 2, noisy=1) == []


def test_the_hit_rate_falling_below_half_of_the_previous_minutes():
    run = _Run(AlarmBook())
    run.run(70.0, readouts_per_s=1000.0)
    assert run.run(3.0, readouts_per_s=700.0) == []  # 30% down: not yet
    fired = run.run(5.0, readouts_per_s=300.0)
    assert fired == ["rate_drop"]
    assert "below 0.5 x the previous minute's" in run.book.alarms[0]["message"]
    run.run(70.0, readouts_per_s=300.0)  # the new rate becomes the reference: the condition clears
    assert not run.book.alarms[0]["active"]
    _latched_then_acknowledged(run, "rate_drop")


def test_the_rate_drop_needs_a_reference_and_a_running_monitor():
    run = _Run(AlarmBook())
    run.run(20.0)
    assert run.run(10.0, readouts_per_s=10.0) == []  # less than 30 s of reference
    run.run(70.0)
    assert run.run(10.0, running=False) == []  # stopped: a zero rate is no fault


def test_an_acknowledged_alarm_whose_fault_holds_stays_until_it_clears_then_a_new_latch():
    run = _Run(AlarmBook())
    run.run(10.0)
    run.run(6.0, data=False)
    assert run.book.acknowledge() == 1
    (alarm,) = run.book.alarms
    assert alarm["active"] and alarm["acknowledged"]
    run.run(2.0, data=False)
    assert run.book.alarms[0]["acknowledged"]
    run.run(1.0)  # data again: the acknowledged alarm goes
    assert run.book.alarms == []
    assert run.run(6.0, data=False) == ["no_data"]  # a new latch
    assert run.book.alarms[0]["acknowledged"] is False and run.book.alarms[0]["count"] == 1


def test_an_alarm_firing_again_before_acknowledgement_counts():
    run = _Run(AlarmBook())
    run.run(10.0)
    run.step(malformed=1)
    run.run(11.0)
    assert run.step(malformed=2) == []  # the same latch
    (alarm,) = run.book.alarms
    assert alarm["count"] == 2 and alarm["active"] and alarm["first"] < alarm["last"]
    assert alarm["message"].startswith("2 malformed")


def test_acknowledge_all_and_several_latches_in_order():
    run = _Run(AlarmBook())
    run.run(10.0)
    run.step(dropped=1)
    run.step(malformed=1)
    assert _names(run.book) == ["dropped", "malformed"]
    run.run(11.0)
    assert run.book.acknowledge() == 2 and run.book.alarms == []
    with pytest.raises(ValueError, match="no alarm rule named 'nope'"):
        run.book.acknowledge("nope")


def test_a_custom_rule_with_for_seconds():
    book = AlarmBook(defaults=False)
    book.add("slow_hits", "hit_rate", below=100.0, for_seconds=3.0)
    run = _Run(book)
    run.run(10.0)
    assert run.run(3.0, hits_per_s=50.0) == []  # seen below at 6 evaluations, 2.5 s apart: not yet
    assert run.step(hits_per_s=50.0) == ["slow_hits"]  # 3 s
    assert book.alarms[0]["message"] == "hit_rate = 50, below 100"
    assert run.step() == [] and not book.alarms[0]["active"]
    run.run(2.0, hits_per_s=50.0)
    run.step()  # a 2 s dip: does not hold for 3 s
    assert book.alarms[0]["count"] == 1
    _latched_then_acknowledged(run, "slow_hits")


def test_a_custom_rule_on_a_rate_of_change():
    book = AlarmBook(defaults=False)
    book.add("losing", "lost/s", above=10.0)
    run = _Run(book)
    assert run.step(lost=100) == []  # no previous sample yet
    assert run.step(lost=4) == []  # 8/s
    assert run.step(lost=6) == ["losing"]  # 12/s
    assert book.alarms[0]["message"] == "lost/s = 12, above 10"
    book.add("busy", "readouts/s", above=1500.0)
    assert run.step(readouts_per_s=2000.0) == []  # a rule added now: its counter's first sample
    assert run.step(readouts_per_s=2000.0) == ["busy"]


def test_custom_rules_are_checked():
    book = AlarmBook()
    with pytest.raises(ValueError, match="exists already"):
        book.add("lost", "lost", above=0)
    with pytest.raises(ValueError, match="above=, below="):
        book.add("x", "lost")
    with pytest.raises(ValueError, match="unknown counter 'lots'"):
        book.add("x", "lots/s", above=1)
    with pytest.raises(ValueError, match="unknown counter 'last_datagram'"):
        book.add("x", "last_datagram", above=1)
    with pytest.raises(ValueError, match="for_seconds"):
        book.add("x", "lost", above=1, for_seconds=-1)
    book.add("x", "lost", above=1)
    book.remove("x")
    assert "x" not in book.rules


def test_a_counter_reset_is_not_a_fault_and_reset_forgets_everything():
    run = _Run(AlarmBook())
    run.run(10.0)
    run.step(malformed=3)
    run.values.update(readouts=0, hits=0, malformed=0)  # the engine was reset
    run.run(11.0)
    assert not run.book.alarms[0]["active"]
    run.book.reset()
    assert run.book.alarms == [] and run.book.rules == DEFAULT_RULES


def test_rates_override_the_status_and_running_comes_from_the_status():
    book = AlarmBook(defaults=False)
    book.add("quiet", "hit_rate", below=1.0)
    st = Status.from_dict({"hit_rate": 50.0, "running": False}, taken_at=T0)
    assert book.evaluate(st, rates={"hit_rate": 0.5}) == ["quiet"]
    assert book.alarms[0]["first"] == T0
    stopped = AlarmBook()
    assert stopped.evaluate(Status.from_dict({"running": False, "last_datagram": None}), now=T0) == []
    assert stopped.evaluate(Status.from_dict({"running": False, "last_datagram": None}), now=T0 + 60) == []
