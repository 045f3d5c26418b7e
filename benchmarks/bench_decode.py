"""Decoding throughput: the per-readout path against decode_batch.

Usage::

    python benchmarks/bench_decode.py [--quick] [--profile] [--apx FILE]

Two streams:

(a) the real .apx file's records (``../shared/astropix-data/`` beside the
    repository) repeated to >= 100,000 readouts, ids renumbered consecutively
    so that chaining works as in a live stream; where the file is absent, a
    simulated stream of one hit per readout instead (said in the output);
(b) simulated dense readouts, 32 hits each.

Three paths, all chaining the extra bytes of consecutive readouts:
``AstroPix4Readout.from_bytes(r).decode(extra)`` one readout at a time (the
collaboration's API, written out); ``ChainedDecoder(AstroPix4Readout).decode``
(the same through the decoder the monitor engine uses for readout classes
other than AstroPix 4, counters included); and ``decode_batch(records)``
(``BatchDecoder``). Each is timed best-of-3 in the same run.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from astropix_nbmonitor.fileio import apx_open
from astropix_nbmonitor.fmt import AstroPix4Readout, ChainedDecoder, decode_batch
from astropix_nbmonitor.sim import AstroPix4Simulator

REAL_APX = Path(__file__).resolve().parents[1].parent / "shared" / "astropix-data" / "20250723_092534_data.apx"

TARGET_PER_READOUT = 150_000  # readouts/s
TARGET_BATCH_REAL = 500_000  # readouts/s
TARGET_BATCH_DENSE_HITS = 10_000_000  # hits/s

_ID = struct.Struct("<I")


def renumber(records: list[bytes], copies_min: int) -> list[bytes]:
    """Repeat ``records`` to at least ``copies_min`` readouts with ids 0, 1, 2..."""
    copies = -(-copies_min // len(records))
    out = []
    rid = 0
    for _ in range(copies):
        for record in records:
            buf = bytearray(record)
            _ID.pack_into(buf, 3, rid)
            out.append(bytes(buf))
            rid += 1
    return out


def per_readout(records: list[bytes]) -> int:
    """The collaboration's API, one readout at a time, chaining extra bytes."""
    from_bytes = AstroPix4Readout.from_bytes
    prev_id = -2
    extra = None
    n = 0
    for record in records:
        readout = from_bytes(record)
        rid = readout.readout_id
        n += len(readout.decode(extra if rid == prev_id + 1 else None))
        extra = readout.extra_bytes()
        prev_id = rid
    return n


def chained(records: list[bytes]) -> int:
    """The chip-agnostic decoder, one readout at a time, counting as the monitor does."""
    return len(ChainedDecoder(AstroPix4Readout).decode(records))


def batch(records: list[bytes]) -> int:
    return len(decode_batch(records))


def best_of(fn: Callable[[list[bytes]], int], records: list[bytes], repeat: int = 3) -> tuple[float, int]:
    best = float("inf")
    hits = -1
    for _ in range(repeat):
        t0 = time.perf_counter()
        hits = fn(records)
        best = min(best, time.perf_counter() - t0)
    return best, hits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller streams (a few seconds)")
    parser.add_argument("--profile", action="store_true", help="cProfile decode_batch on the dense stream")
    parser.add_argument("--apx", type=Path, default=REAL_APX, help="the real .apx file for stream (a)")
    args = parser.parse_args(argv)

    n_real = 20_000 if args.quick else 100_000
    n_dense = 4_000 if args.quick else 20_000

    streams: list[tuple[str, list[bytes]]] = []
    if args.apx.is_file():
        with apx_open(args.apx) as reader:
            records = list(reader.records())
        name = f"(a) real file x{-(-n_real // len(records))}"
        streams.append((name, renumber(records, n_real)))
        note = f"stream (a): {args.apx.name}, {len(records)} readouts, repeated, ids renumbered"
    else:
        sim = AstroPix4Simulator(seed=1, hits_per_readout=1, fixed_hits=True)
        streams.append(("(a) simulated 1 hit/readout", sim.generate(n_real).records))
        note = f"stream (a): real file not found ({args.apx.name}); simulated one-hit readouts instead"
    dense = AstroPix4Simulator(seed=2, hits_per_readout=32, fixed_hits=True).generate(n_dense).records
    streams.append(("(b) simulated dense, 32 hits", dense))

    print(f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    print(note)
    print()
    header = f"{'stream':<30} {'path':<12} {'readouts':>9} {'hits':>9} {'best s':>8} {'readouts/s':>12} {'hits/s':>12}"
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, str], tuple[float, float]] = {}
    for name, records in streams:
        times = {}
        for label, fn in (("per-readout", per_readout), ("chained", chained), ("decode_batch", batch)):
            seconds, hits = best_of(fn, records)
            times[label] = (seconds, hits)
            rps = len(records) / seconds
            hps = hits / seconds
            results[(name, label)] = (rps, hps)
            print(f"{name:<30} {label:<12} {len(records):>9,} {hits:>9,} {seconds:>8.3f} {rps:>12,.0f} {hps:>12,.0f}")
        if len({hits for _, hits in times.values()}) != 1:
            print(f"  !! the paths found different numbers of hits: {times}")
        ratio = times["per-readout"][0] / times["decode_batch"][0]
        print(f"{'':<30} {'ratio':<12} {'batch / per-readout speed:':>39} x{ratio:.1f}")
    print()
    real_name, dense_name = streams[0][0], streams[1][0]
    checks = [
        ("per-readout >= 150,000 readouts/s (a)", results[(real_name, "per-readout")][0], TARGET_PER_READOUT),
        ("decode_batch >= 500,000 readouts/s (a)", results[(real_name, "decode_batch")][0], TARGET_BATCH_REAL),
        ("decode_batch >= 10,000,000 hits/s (b)", results[(dense_name, "decode_batch")][1], TARGET_BATCH_DENSE_HITS),
    ]
    for label, value, target in checks:
        print(f"target {label:<42} {value:>14,.0f}  {'ok' if value >= target else 'MISSED'}")

    if args.profile:
        print()
        profiler = cProfile.Profile()
        profiler.enable()
        decode_batch(dense)
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
