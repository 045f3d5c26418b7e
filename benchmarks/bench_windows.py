"""Benchmark of the time windows and per-pixel spectra next to the cumulative accumulator.

Run: ``python benchmarks/bench_windows.py [--quick]``. Prints, side by side in
one run (the three fills timed in turn on the same batches, best of N):

1. fill cost per hit of ``HitAccumulator.fill`` (what the engine does now),
   ``WindowedAccumulator.fill`` and ``PixelTots.fill``, for batches of 10 to
   10,000 simulated hits (the engine's batches take about 50 ms of records:
   a few hundred to tens of thousands of hits), and the ratio to
   ``HitAccumulator.fill``;
2. the time to build windows from a full 600 s ring: the hit map and TOT
   spectrum of the last 600 s and 10 s, ``counts(60)`` followed by
   ``find_noisy``, and ``pixel_rate`` over 600 s, with one and four chips;
3. the memory of each structure;
4. the per-pixel deltas of masked windows (``track_pixels``): the cost of one
   second's rollover (the only per-pixel work: once a second, never per
   batch) with 1 and 4 chips at 2,000 and 20,000 hits/s, the read of a
   masked window (``masked_tot_counts``) from a full 600 s ring, and the
   bytes the ring of deltas takes at those rates.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from collections.abc import Callable

import boost_histogram as bh
import numpy as np

from astropix_nbmonitor.astropix4.layout import NUM_COLS, NUM_ROWS
from astropix_nbmonitor.hist import HitAccumulator
from astropix_nbmonitor.noisy import find_noisy
from astropix_nbmonitor.sim import AstroPix4Simulator
from astropix_nbmonitor.windows import PixelTots, WindowedAccumulator

T0 = 1_753_255_536.0


def _best(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_fill(batch: int, total: int, repeat: int) -> dict[str, float]:
    """ns per hit of each fill, filling ``total`` hits in batches of ``batch``."""
    hits = AstroPix4Simulator(seed=1, hits_per_readout=3.0).generate(total // 3 + 10).truth[:total]
    chunks = [hits[i : i + batch] for i in range(0, len(hits), batch)]
    acc = HitAccumulator(NUM_ROWS, NUM_COLS)
    win = WindowedAccumulator(NUM_ROWS, NUM_COLS)
    pix = PixelTots(NUM_ROWS, NUM_COLS)
    clock = itertools.count(T0, 0.05)  # a batch every 50 ms: slots advance as in a run

    def fill_acc() -> None:
        for c in chunks:
            acc.fill(c)

    def fill_win() -> None:
        for c in chunks:
            win.fill(c, now=next(clock))

    def fill_pix() -> None:
        for c in chunks:
            pix.fill(c)

    out = {"HitAccumulator": float("inf"), "WindowedAccumulator": float("inf"), "PixelTots": float("inf")}
    for _ in range(repeat):  # interleaved, so that machine noise hits all three alike
        out["HitAccumulator"] = min(out["HitAccumulator"], _best(fill_acc, 1))
        out["WindowedAccumulator"] = min(out["WindowedAccumulator"], _best(fill_win, 1))
        out["PixelTots"] = min(out["PixelTots"], _best(fill_pix, 1))
    return {k: v / len(hits) * 1e9 for k, v in out.items()}


def _full_ring(chips: tuple[int, ...]) -> WindowedAccumulator:
    """A 600 s ring with every slot filled."""
    win = WindowedAccumulator(NUM_ROWS, NUM_COLS)
    sim = AstroPix4Simulator(seed=2, hits_per_readout=3.0, chip_ids=chips)
    for second in range(600):
        win.fill(sim.generate(100).truth, now=T0 + second)
    return win


def bench_reads(chips: tuple[int, ...], repeat: int) -> dict[str, float]:
    """ms of each window read from a full ring."""
    win = _full_ring(chips)
    now = T0 + 599.5
    reads: dict[str, Callable[[], object]] = {
        "hit_map(600)": lambda: win.hit_map(600, now=now),
        "hit_map(10)": lambda: win.hit_map(10, now=now),
        "tot_hist(600)": lambda: win.tot_hist(600, now=now),
        "counts(60) + find_noisy": lambda: find_noisy(win.counts(60, now=now), 60.0),
        "pixel_rate(600)": lambda: win.pixel_rate(8, 17, seconds=600, now=now),
    }
    return {name: _best(fn, repeat) * 1e3 for name, fn in reads.items()}


def bench_rollover(chips: tuple[int, ...], hits_per_second: int, seconds: int = 600) -> dict[str, float]:
    """Median ms of a rollover, ms of masked window reads, and bytes of the deltas, over ``seconds`` s of a run."""
    win, pix = WindowedAccumulator(NUM_ROWS, NUM_COLS), PixelTots(NUM_ROWS, NUM_COLS)
    deltas = win.track_pixels(pix)
    sim = AstroPix4Simulator(seed=3, hits_per_readout=2.0, chip_ids=chips)
    rolls = []
    for second in range(seconds):
        hits = sim.generate(hits_per_second // 2).truth
        bins = win.tot_bins(hits["tot_us"])
        win.fill(hits, now=T0 + second + 0.5, tot_bins=bins)
        pix.fill(hits, tot_bins=bins)
        start = time.perf_counter()
        win.advance_to(int(T0) + second + 1)  # the next second's first fill would do this
        rolls.append(time.perf_counter() - start)
    now = T0 + seconds - 0.5
    masked = [(chips[0], 8, 17), (chips[-1], 3, 4)]
    return {
        "rollover ms (median)": float(np.median(rolls)) * 1e3,
        "rollover ms (max)": max(rolls) * 1e3,
        "masked_tot_counts(10) ms": _best(lambda: win.masked_tot_counts(10, masked, now=now), 20) * 1e3,
        "masked_tot_counts(600) ms": _best(lambda: win.masked_tot_counts(600, masked, now=now), 5) * 1e3,
        "deltas bytes": float(deltas.nbytes),
        "copies bytes": float(deltas.copies_nbytes),
        "dropped seconds": float(deltas.dropped_seconds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer hits and repeats")
    args = parser.parse_args(argv)
    total, repeat = (20_000, 3) if args.quick else (200_000, 5)
    print(f"machine: {platform.platform()}, Python {sys.version.split()[0]}, numpy {np.__version__}, "
          f"boost-histogram {bh.__version__}")
    print(f"\n1. fill, ns per hit ({total:,} simulated hits, best of {repeat}, the three interleaved)")
    print(f"{'batch':>8} {'HitAccumulator':>15} {'Windowed':>10} {'ratio':>6} {'PixelTots':>10} {'ratio':>6}")
    for batch in (10, 100, 1000, 10_000):
        r = bench_fill(batch, total, repeat)
        base = r["HitAccumulator"]
        print(f"{batch:>8,} {base:>15.1f} {r['WindowedAccumulator']:>10.1f} {r['WindowedAccumulator'] / base:>6.2f}"
              f" {r['PixelTots']:>10.1f} {r['PixelTots'] / base:>6.2f}")
    for chips in ((0,), (0, 1, 2, 3)):
        print(f"\n2. reads from a full 600 s ring, {len(chips)} chip(s), ms (best of {repeat * 4})")
        for name, ms in bench_reads(chips, repeat * 4).items():
            print(f"   {name:<26} {ms:8.3f}")
    win, pix = WindowedAccumulator(NUM_ROWS, NUM_COLS), PixelTots(NUM_ROWS, NUM_COLS)
    print("\n3. memory")
    print(f"   WindowedAccumulator (600 s, 1 s): {win.bytes_per_chip:,} bytes a chip seen "
          f"(32 chips: {32 * win.bytes_per_chip:,})")
    print(f"   PixelTots: {pix.bytes_per_chip:,} bytes a chip seen (32 chips: {32 * pix.bytes_per_chip:,})")
    seconds = 120 if args.quick else 600
    print(f"\n4. per-pixel deltas of masked windows ({seconds} s of a run, the clock driven; 32 MiB budget)")
    print(f"{'chips':>6} {'hits/s':>8} {'rollover ms':>12} {'(max)':>7} {'masked 10 s':>12} {'masked 600 s':>13}"
          f" {'deltas bytes':>13} {'copies bytes':>13} {'dropped s':>10}")
    for chips in ((0,), (0, 1, 2, 3)):
        for rate in (2_000, 20_000):
            r = bench_rollover(chips, rate, seconds)
            print(f"{len(chips):>6} {rate:>8,} {r['rollover ms (median)']:>12.3f} {r['rollover ms (max)']:>7.2f}"
                  f" {r['masked_tot_counts(10) ms']:>12.3f} {r['masked_tot_counts(600) ms']:>13.3f}"
                  f" {r['deltas bytes']:>13,.0f} {r['copies bytes']:>13,.0f} {r['dropped seconds']:>10,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
