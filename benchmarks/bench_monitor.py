"""Benchmark of the monitor widget: processing rate, refresh cost, kernel latency.

Run: ``python benchmarks/bench_monitor.py [--quick]``. Prints, side by side in
one run:

1. readouts/s through the monitor's processing, for real-data-sized readouts
   (one hit each) and dense ones (32 hits each): the batch path that
   ``AstroPix4SimpleMonitor`` uses, and the per-readout path
   (``process_readout`` for each readout, the collaboration's design) as the
   baseline, with their ratio;
2. the time of one ``update_display()`` while data keep arriving, and the bytes
   of widget state it sends to the front end (every comm message counted:
   JSON plus binary buffers);
3. how fast a trivial "cell" (a few microseconds of Python) answers in the
   main thread while the monitor ingests a UDP stream at 50,000 readouts/s
   from another process (the ``astropix-nbmonitor simulate`` command), and
   whether the monitor kept up.

2b. the same with a 60 s window, masked pixels and a selected pixel
   (issue 12), and the whole refresh callback (noisy pixels, alarms, display,
   dashboard);

Targets (issue 4): >= 250,000 readouts/s through processing, update_display()
under 5 ms sending under 20 kB, a trivial cell within 100 ms at 50,000 readouts/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import comm
import numpy as np
from comm.base_comm import BaseComm

from astropix_nbmonitor.monitor import AbstractMonitor, AstroPix4SimpleMonitor
from astropix_nbmonitor.sim import AstroPix4Simulator

REAL_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "astropix-data" / "20250723_092534_data.apx"


class _CountingComm(BaseComm):
    """A comm that counts what a widget would send to the browser."""

    sent_bytes = 0
    messages = 0

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):  # noqa: ANN001
        if msg_type == "comm_msg":
            _CountingComm.messages += 1
            _CountingComm.sent_bytes += len(json.dumps(data, default=str))
            _CountingComm.sent_bytes += sum(memoryview(b).nbytes for b in buffers or ())


def _renumber(records: list[bytes], n: int) -> list[bytes]:
    out = []
    for i in range(n):
        rec = records[i % len(records)]
        out.append(rec[:3] + i.to_bytes(4, "little") + rec[7:])
    return out


def _real_stream(n: int) -> tuple[list[bytes], str]:
    if REAL_FILE.exists():
        from astropix_nbmonitor.fileio import apx_open

        with apx_open(REAL_FILE) as reader:
            records = list(reader.records())
        return _renumber(records, n), f"real file x{n // len(records)}"
    run = AstroPix4Simulator(seed=1, hits_per_readout=1.0, fixed_hits=True).generate(n)
    return run.records, "simulated, 1 hit/readout (real file absent)"


def _best_of(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_processing(quick: bool) -> None:
    n_real = 50_000 if quick else 200_000
    n_dense = 5_000 if quick else 20_000
    real, label = _real_stream(n_real)
    dense = AstroPix4Simulator(seed=2, hits_per_readout=32, fixed_hits=True).generate(n_dense).records
    print("\n1. processing (readouts/s, best of 3)")
    print(f"{'stream':<42}{'batch path':>14}{'per-readout':>14}{'ratio':>8}")
    for name, records in ((f"real-data-sized ({label})", real), ("dense (32 hits/readout)", dense)):

        def batch(records=records):
            mon = AstroPix4SimpleMonitor(port=0)
            for i in range(0, len(records), 5000):
                mon.process_batch(records[i : i + 5000])
            mon.close()

        def per_readout(records=records[: len(records) // 4]):
            mon = AstroPix4SimpleMonitor(port=0)
            AbstractMonitor.process_batch(mon, records)
            mon.close()

        fast = len(records) / _best_of(batch)
        slow = (len(records) // 4) / _best_of(per_readout)
        print(f"{name:<42}{fast:>14,.0f}{slow:>14,.0f}{fast / slow:>7.1f}x")


def bench_refresh(quick: bool) -> None:
    comm.create_comm = _CountingComm
    mon = AstroPix4SimpleMonitor(port=0)
    sim = AstroPix4Simulator(seed=3, hits_per_readout=2.0, faults={"out_of_matrix": 0.01})
    n = 100 if quick else 400
    chunks = [sim.generate(500).records for _ in range(n)]
    mon.refresh()
    times, sizes = [], []
    for chunk in chunks:
        mon.process_batch(chunk)
        mon._sync_traits(mon.engine.status())  # what a refresh does before update_display
        before = _CountingComm.sent_bytes
        t0 = time.perf_counter()
        mon.update_display()
        times.append(time.perf_counter() - t0)
        sizes.append(_CountingComm.sent_bytes - before)
    mon.close()
    t = np.array(times) * 1e3
    s = np.array(sizes) / 1e3
    print(f"\n2. update_display() over {n} refreshes, 500 new readouts before each")
    print(f"   time: median {np.median(t):.2f} ms, p95 {np.percentile(t, 95):.2f} ms, max {t.max():.2f} ms")
    print(f"   sent: median {np.median(s):.1f} kB, max {s.max():.1f} kB per refresh")


def bench_refresh_shift(quick: bool) -> None:
    """update_display() with a 60 s window, two masked pixels and a selected pixel, and the whole refresh."""
    comm.create_comm = _CountingComm
    mon = AstroPix4SimpleMonitor(port=0)
    sim = AstroPix4Simulator(seed=3, hits_per_readout=2.0, noisy_pixels=[(30, 2)], faults={"out_of_matrix": 0.01})
    n = 100 if quick else 400
    chunks = [sim.generate(500).records for _ in range(n)]
    clock = [1_000_000.0]
    mon.engine.clock = lambda: clock[0]
    mon.window = 60
    mon.mask_pixels([(0, 2, 30), (0, 0, 0)])
    mon.selected_pixel = (8, 17)
    mon.refresh()
    times, whole, sizes = [], [], []
    for chunk in chunks:
        clock[0] += 0.5  # a refresh every 0.5 s of the run: the ring turns
        mon.process_batch(chunk)
        mon._sync_traits(mon.engine.status())
        before = _CountingComm.sent_bytes
        t0 = time.perf_counter()
        mon.update_display()
        times.append(time.perf_counter() - t0)
        sizes.append(_CountingComm.sent_bytes - before)
        t0 = time.perf_counter()
        mon._on_refresh(mon.engine)  # what the processing thread runs: noisy, alarms, update_display, dashboard
        whole.append(time.perf_counter() - t0)
    mon.close()
    t, w, s = np.array(times) * 1e3, np.array(whole) * 1e3, np.array(sizes) / 1e3
    print(f"\n2b. with a 60 s window, 2 masked pixels and a selected pixel, over {n} refreshes")
    print(f"   update_display(): median {np.median(t):.2f} ms, p95 {np.percentile(t, 95):.2f} ms, max {t.max():.2f} ms")
    print(f"   whole refresh (noisy, alarms, display, dashboard): median {np.median(w):.2f} ms, p95 {np.percentile(w, 95):.2f} ms")
    print(f"   sent: median {np.median(s):.1f} kB, max {s.max():.1f} kB per update_display()")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_latency(quick: bool, rate: float = 50_000.0) -> None:
    seconds = 5.0 if quick else 15.0
    port = _free_port()
    mon = AstroPix4SimpleMonitor(port=port).start()
    cmd = [sys.executable, "-m", "astropix_nbmonitor.cli", "simulate", "--port", str(port),
           "--rate", f"{rate:g}", "--duration", f"{seconds:g}", "--seed", "4"]
    sender = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lat = []
    time.sleep(0.5)
    t_end = time.monotonic() + seconds - 1.0
    while time.monotonic() < t_end:
        t0 = time.perf_counter()
        sum(range(100))  # the trivial cell
        time.sleep(0.01)  # a cell every 10 ms: the latency is what is beyond it
        lat.append(time.perf_counter() - t0 - 0.01)
    out, _ = sender.communicate(timeout=60)
    time.sleep(0.5)
    mon.stop()
    stats = mon.listener_stats()
    mon.close()
    lat_ms = np.array(lat) * 1e3
    print(f"\n3. trivial cell latency while the monitor ingests {rate:,.0f} readouts/s for {seconds:g} s")
    print(f"   sender: {out.strip().splitlines()[-1] if out.strip() else '(no output)'}")
    print(f"   cell latency: median {statistics.median(lat_ms):.2f} ms, p99 {np.percentile(lat_ms, 99):.2f} ms, "
          f"max {lat_ms.max():.2f} ms over {len(lat_ms)} cells")
    print(f"   monitor: {mon.num_readouts:,} readouts processed, lost {stats.lost}, dropped {stats.dropped}, "
          f"malformed {stats.malformed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (about 30 s)")
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, Python {platform.python_version()}, numpy {np.__version__}")
    bench_processing(args.quick)
    bench_refresh(args.quick)
    bench_refresh_shift(args.quick)
    bench_latency(args.quick)


if __name__ == "__main__":
    main()
