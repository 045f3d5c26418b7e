"""Benchmark of the monitor hub: its CPU per attached viewer, the state message's size, the latency.

Run: ``python benchmarks/bench_hub.py [--quick]``. Prints, side by side in one run:

1. the hub's CPU (CPU seconds of the hub process, from ``/proc/PID/stat``,
   per second of wall time, in % of one core) and the size of one state
   message, with 0, 1, 10 and 50 attached viewers, at the default 0.5 s
   refresh, while a steady simulated stream of 1,000 readouts/s arrives. The
   hub is the ``astropix-nbmonitor hub`` command in its own process; the
   viewers are ``HubEngine`` objects in other processes (10 per process);
   the stream is sent from this process.
2. the time from a datagram arriving at the hub to its hit being in a
   viewer's ``hit_map``, p50 and p99: readouts with one hit of chip 7 (the
   stream's hits are chip 0) are slipped into the stream, at a random phase
   of the hub's refresh, and a viewer in this process polls
   ``hit_map(7)`` every millisecond. Sender, hub and viewer share the
   machine's clock (loopback), so the time is measured from the send.
3. the time of ``encode_state`` and ``decode_state`` of one one-chip state
   with a full rate history (in this process).

The state message sizes are the mean of 10 consecutive states, with the
part of them that is the time-window block (issue 12: the seconds completed
since the last state and the newest one, with their sparse per-pixel TOT).

Targets (issue 11): 50 viewers cost the hub < 5% of one core more than none;
one chip's state message < 100 kB; p99 latency < refresh interval + 100 ms.
Nothing is asserted: the figures go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import textwrap
import time

from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import PacedSender, cpu_seconds  # noqa: E402 - the benchmarks' shared pieces
from _jupyter_env import free_tcp_pair, free_udp_port  # noqa: E402 - the tests' free-port helpers

from astropix_nbmonitor.engine import MonitorEngine
from astropix_nbmonitor.hub import HubEngine, HubInfo, decode_state, encode_state, request_command
from astropix_nbmonitor.sim import AstroPix4Simulator

REFRESH_S = 0.5
MARK_CHIP = 7

_VIEWERS = textwrap.dedent(
    """
    import json, sys, time
    from astropix_nbmonitor.hub import HubEngine
    url, count = sys.argv[1], int(sys.argv[2])
    viewers = [HubEngine(url).start() for _ in range(count)]
    deadline = time.monotonic() + 60
    while not all(v.connected for v in viewers) and time.monotonic() < deadline:
        time.sleep(0.05)
    print("ready" if all(v.connected for v in viewers) else "not connected", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    states = sum(link.states_received for v in viewers for link in v.links.values())
    missed = sum(v.missed_updates for v in viewers)
    for v in viewers:
        v.close()
    print(json.dumps({"states": states, "missed": missed}), flush=True)
    """
)


# --------------------------------------------------------------------------
# The stream
# --------------------------------------------------------------------------


class _Sender(PacedSender):
    """Send a steady simulated stream, and on request one marked readout (chip 7), ids consecutive."""

    def __init__(self, port: int, rate: float) -> None:
        super().__init__(port, rate, AstroPix4Simulator(seed=1, hits_per_readout=1.0), chunk=1000, name="bench-sender")
        self._marker = AstroPix4Simulator(seed=2, hits_per_readout=1.0, fixed_hits=True, chip_ids=(MARK_CHIP,))

    def mark(self, timeout: float = 5.0) -> float:
        """Send one marked readout now; return its send time (``time.monotonic()``)."""
        return super().mark(self._marker.generate(1).records[0], timeout)


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------


def _window_bytes(frames: list[bytes]) -> int:
    """Bytes of a state's time-window block: its JSON and the array frames it refers to."""
    block = json.loads(frames[1]).get("windows")
    if block is None:
        return 0
    refs = [v["frame"] for v in block.values() if isinstance(v, dict) and "frame" in v]
    return len(json.dumps(block, separators=(",", ":"))) + sum(len(frames[k]) for k in refs)


def _state_size(url: str, count: int = 10) -> tuple[int, int, int]:
    """Mean bytes of ``count`` consecutive state messages, of their JSON header, and of their time-window part."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sizes = []
    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"state")
        sub.connect(url)
        while len(sizes) < count:
            if not sub.poll(10_000):
                raise RuntimeError("no state message within 10 s")
            frames = sub.recv_multipart()
            sizes.append((sum(map(len, frames)), len(frames[1]), _window_bytes(frames)))
    finally:
        sub.close(linger=0)
    return tuple(round(statistics.fmean(column)) for column in zip(*sizes))


def _start_viewers(url: str, n: int, per_process: int) -> list[subprocess.Popen]:
    procs = []
    left = n
    while left > 0:
        k = min(per_process, left)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _VIEWERS, url, str(k)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
        )
        left -= k
    for proc in procs:
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"a viewer process did not attach: {line!r}")
    return procs


def _stop_viewers(procs: list[subprocess.Popen]) -> tuple[int, int]:
    states = missed = 0
    for proc in procs:
        out, _ = proc.communicate(input="", timeout=60)
        summary = json.loads(out.strip().splitlines()[-1])
        states += summary["states"]
        missed += summary["missed"]
    return states, missed


def measure_cpu(hub_pid: int, url: str, n: int, window: float, per_process: int) -> dict[str, float]:
    """The hub's CPU with ``n`` viewers attached, over ``window`` seconds."""
    procs = _start_viewers(url, n, per_process)
    try:
        time.sleep(1.5)  # let the attachments settle
        wall0, cpu0 = time.monotonic(), cpu_seconds(hub_pid)
        time.sleep(window)
        wall1, cpu1 = time.monotonic(), cpu_seconds(hub_pid)
        size, header, windows = _state_size(url)
    finally:
        states, missed = _stop_viewers(procs)
    return {
        "viewers": n,
        "cpu_pct": 100.0 * (cpu1 - cpu0) / (wall1 - wall0),
        "size": size,
        "header": header,
        "windows": windows,
        "states": states,
        "missed": missed,
    }


def measure_latency(url: str, sender: _Sender, samples: int) -> tuple[list[float], float | None]:
    """Seconds from sending a marked readout to its hit in a viewer's hit_map, ``samples`` times."""
    viewer = HubEngine(url).start()
    latencies = []
    try:
        deadline = time.monotonic() + 30
        while not viewer.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        rng = random.Random(3)
        for _ in range(samples):
            time.sleep(rng.uniform(0.0, REFRESH_S))  # a random phase of the hub's refresh
            before = viewer.hit_map(MARK_CHIP).sum()
            sent_at = sender.mark()
            limit = sent_at + 5.0
            while viewer.hit_map(MARK_CHIP).sum() <= before and time.monotonic() < limit:
                time.sleep(0.001)
            latencies.append(time.monotonic() - sent_at)
        return latencies, viewer.plot_delay
    finally:
        viewer.close()


def measure_codec(repeats: int = 50) -> tuple[float, float, int]:
    """Median ms of encode_state and decode_state of a one-chip state (100,000 readouts, full rate history)."""
    engine = MonitorEngine(port=0)
    engine.replay(AstroPix4Simulator(seed=4, hits_per_readout=1.0).generate(100_000).records)
    for _ in range(360):
        engine.history.add(1000.0, 1000.0)
    state = engine.state()
    info = HubInfo("x", 0.0, ("127.0.0.1", 5007), "loopback", "tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558", 0.5)
    encode, decode = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        frames = encode_state(state, info, 1)
        t1 = time.perf_counter()
        decode_state(frames)
        decode.append(time.perf_counter() - t1)
        encode.append(t1 - t0)
    return 1000 * statistics.median(encode), 1000 * statistics.median(decode), sum(map(len, frames))


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows and fewer samples")
    parser.add_argument("--viewers", default="0,1,10,50", help="viewer counts to measure (default 0,1,10,50)")
    parser.add_argument("--per-process", type=int, default=10, help="viewers per viewer process (default 10)")
    parser.add_argument("--rate", type=float, default=1000.0, help="readouts/s of the stream (default 1000)")
    args = parser.parse_args()
    window = 4.0 if args.quick else 10.0
    samples = 30 if args.quick else 100
    counts = [int(x) for x in args.viewers.split(",")]

    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, Python {platform.python_version()}, "
          f"numpy {np.__version__}, pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}")  # fmt: skip
    udp, tcp = free_udp_port(), free_tcp_pair()
    url = f"tcp://127.0.0.1:{tcp}"
    hub = subprocess.Popen(
        [sys.executable, "-m", "astropix_nbmonitor.cli", "hub", "--port", str(udp), "--publish", url,
         "--refresh", str(REFRESH_S), "--token", "bench"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    sender = _Sender(udp, args.rate)
    try:
        request_command(f"tcp://127.0.0.1:{tcp + 1}", {"command": "ping"}, timeout=60)
        sender.start()
        time.sleep(1.0)
        rows = [measure_cpu(hub.pid, url, n, window, args.per_process) for n in counts]
        latencies, plot_delay = measure_latency(url, sender, samples)
    finally:
        sender.stop_event.set()
        sender.join(5)
        hub.terminate()
        hub.wait(30)

    print(f"\nhub at refresh {REFRESH_S} s, stream {args.rate:,.0f} readouts/s, {window:.0f} s windows")
    print(f"{'viewers':>8} {'hub CPU % of a core':>20} {'vs 0 viewers':>13} {'state msg bytes':>16} "
          f"{'(JSON header)':>14} {'(windows)':>10} {'states rcvd':>12} {'missed':>7}")  # fmt: skip
    base = rows[0]["cpu_pct"] if rows and rows[0]["viewers"] == 0 else None
    for row in rows:
        extra = "" if base is None else f"{row['cpu_pct'] - base:+.2f}"
        print(f"{row['viewers']:>8} {row['cpu_pct']:>20.2f} {extra:>13} {row['size']:>16,} "
              f"{row['header']:>14,} {row['windows']:>10,} {row['states']:>12,} {row['missed']:>7,}")  # fmt: skip
    print("(state bytes: the mean of 10 consecutive states; windows: their time-window block, JSON and arrays)")
    print(f"\ndatagram at the hub -> hit in a viewer's hit_map ({len(latencies)} marked readouts, random phase):")
    print(f"  p50 {1000 * _percentile(latencies, 50):.0f} ms, p99 {1000 * _percentile(latencies, 99):.0f} ms, "
          f"max {1000 * max(latencies):.0f} ms, mean {1000 * statistics.fmean(latencies):.0f} ms "
          f"(target p99 < {1000 * REFRESH_S + 100:.0f} ms); viewer's plot_delay at the end "
          f"{'-' if plot_delay is None else f'{1000 * plot_delay:.0f} ms'}")  # fmt: skip
    encode_ms, decode_ms, size = measure_codec()
    print(f"\none state (1 chip, 100,000 readouts, 180 s of rate history: {size:,} bytes): "
          f"encode_state {encode_ms:.2f} ms, decode_state {decode_ms:.2f} ms (median of 50)")  # fmt: skip


if __name__ == "__main__":
    main()
