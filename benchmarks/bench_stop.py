"""How long Stop takes with a backlog, and where the backlog goes (issue 10).

A user's ``process_readout`` that takes 10 ms a readout, and 26,768 readouts
waiting (the case that once blocked the kernel's main thread for 275 s):
``stop()`` is timed from the caller's side, and the readouts are accounted
for (processed, or dropped and counted). Also a refresh's pace with that slow
step (batches shrink to one readout so refreshes stay on time).

    python benchmarks/bench_stop.py
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import send_paced, wait_for  # noqa: E402

from astropix_nbmonitor.fmt import AstroPix4Readout  # noqa: E402
from astropix_nbmonitor.monitor import AbstractMonitor  # noqa: E402
from astropix_nbmonitor.sim import AstroPix4Simulator  # noqa: E402

BACKLOG = 26_768
STEP_S = 0.01


class SlowMonitor(AbstractMonitor):
    """A user's monitor whose process_readout takes STEP_S a readout."""

    def __init__(self) -> None:
        super().__init__(AstroPix4Readout, port=0)
        self.refreshes: list[float] = []

    def process_readout(self, readout):
        time.sleep(STEP_S)
        return self.decode_readout(readout)

    def update_display(self) -> None:
        self.refreshes.append(time.monotonic())


def main() -> None:
    print(f"machine: {platform.platform()}, Python {platform.python_version()}")
    mon = SlowMonitor()
    try:
        mon.start(refresh_interval=0.5)
        records = AstroPix4Simulator(seed=1).generate(BACKLOG).records
        send_paced(mon.port, records)
        wait_for(lambda: mon.listener_stats().accepted == BACKLOG, timeout=120)
        time.sleep(3.0)  # let some refreshes happen while the backlog is worked on
        began = time.monotonic()
        mon.stop()
        took = time.monotonic() - began
        gaps = [b - a for a, b in zip(mon.refreshes, mon.refreshes[1:])]
        print(f"{BACKLOG:,} readouts waiting, process_readout {1000 * STEP_S:.0f} ms each "
              f"(all of them would take {BACKLOG * STEP_S:.0f} s)")
        print(f"stop(): {1000 * took:,.0f} ms; processed {mon.num_readouts:,}, dropped and counted "
              f"{mon.dropped_readouts:,}, sum {mon.num_readouts + mon.dropped_readouts:,}")
        if gaps:
            print(f"refresh interval while the slow backlog was processed (0.5 s asked): "
                  f"median {statistics.median(gaps):.3f} s, max {max(gaps):.3f} s over {len(gaps)} refreshes")
    finally:
        mon.close()


if __name__ == "__main__":
    main()
