"""Overload soak: a running AstroPix4SimpleMonitor fed twice its capacity for a minute.

Usage::

    python benchmarks/soak.py [--seconds 60] [--quick] [--senders N] [--hits-per-readout K]

(``--quick``: a 10 s soak and shorter measurements, about 25 s in all.)

Steps, all in one run, on 127.0.0.1 with ports chosen by the system:

1. Capacity: the readouts per second that a running
   :class:`~astropix_nbmonitor.monitor.AstroPix4SimpleMonitor` processes end
   to end (receive, validate, buffer, decode, fill the histograms). Its socket
   is filled first (nobody reading), then the monitor is started and timed
   until it has processed every record (median of a few runs). For
   comparison, one sender process flat out into a running monitor: what it
   reaches and what the monitor processes meanwhile.
2. The soak: sender processes (``--senders``; by default as many as needed
   to reach the target, at most one more than the CPUs) offer twice that
   capacity, readouts with consecutive ids (the real data's readouts, or
   simulated ones with ``--hits-per-readout K``: heavier readouts lower the
   capacity, so that senders sharing a small machine can offer twice of it), for
   ``--seconds`` into a running monitor (``refresh_interval`` 0.5 s). The
   rate actually reached and its ratio to the capacity are printed: senders
   share the machine with the monitor, and may fall short of the target.
   Meanwhile the main thread stands for the notebook: every 10 ms it runs a
   trivial "cell" and measures its latency beyond the 10 ms sleep, and every
   second it samples the process's resident memory (VmRSS).
3. Figures: resident memory over time (a plateau is expected: the
   listener's buffer is bounded), the exact accounting of every readout sent
   (``sent == processed + lost + dropped`` from the monitor's counters; a
   slow tail of records with the next ids after the senders stop makes
   readouts the kernel dropped at the very end show up as an id gap), the
   intervals between display refreshes and the time of each
   ``update_display()`` (with the widget state it sent, every comm message
   counted), and the trivial cell's latency. MET / NOT MET is printed for:
   memory plateau, exact accounting, refresh interval p99 < 2 x
   refresh_interval, cell latency p99 < 100 ms.

Readouts the kernel drops (socket buffer full) show as ``lost`` (gaps in the
ids); readouts the listener drops because its own buffer is full show as
``dropped``. Every datagram sent is a valid record: ``malformed`` must be 0.
The exit code is 0 whenever the soak ran: the figures are for the reader.
The short version of this soak runs in the test suite (``tests/test_soak.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

import bench_udp
from astropix_nbmonitor.fmt import RECORD_HEADER, RECORD_HEADER_SIZE
from astropix_nbmonitor.monitor import AstroPix4SimpleMonitor
from astropix_nbmonitor.sim import AstroPix4Simulator

#: Seconds between two display refreshes of the soaked monitor.
REFRESH_INTERVAL = 0.5
#: Records sent slowly before the senders start: they set the listener's id baseline in order.
LEAD_IN = 20
#: Records sent slowly after the senders end: a loss at the very end becomes an id gap.
TAIL = 20
#: Period of the trivial "cell" in the main thread (s).
CELL_PERIOD = 0.01
#: Period of the resident memory samples (s).
RSS_PERIOD = 1.0
#: Most growth of the resident memory from the first half of the soak to the second for a plateau (MiB).
PLATEAU_MIB = 5.0
#: Target of the trivial cell's p99 latency (ms).
CELL_TARGET_MS = 100.0
#: Records per sendmmsg call of a sender process.
BLOCK = 256


def trivial_cell() -> int:
    """What a notebook user runs while the monitor works: a few microseconds of Python."""
    return sum(range(100))


# --------------------------------------------------------------------------
# The monitor under test


class SoakMonitor(AstroPix4SimpleMonitor):
    """An :class:`AstroPix4SimpleMonitor` that notes when it refreshes and what it processed.

    Attributes
    ----------
    refresh_times : list of float
        ``time.perf_counter()`` at the start of every ``update_display()``.
    refresh_durations : list of float
        How long each ``update_display()`` took (s).
    refresh_bytes : list of int
        Widget state sent by each ``update_display()``, when ``sent_bytes`` is set.
    batch_readouts : int
        Readouts handed to ``process_batch`` (counted after each batch).
    last_batch_time : float or None
        ``time.perf_counter()`` at the end of the last ``process_batch``.
    sent_bytes : callable or None
        Returns the bytes of widget state sent so far (a counting comm).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.refresh_times: list[float] = []
        self.refresh_durations: list[float] = []
        self.refresh_bytes: list[int] = []
        self.batch_readouts = 0
        self.last_batch_time: float | None = None
        self.sent_bytes: Callable[[], int] | None = None
        super().__init__(*args, **kwargs)

    def update_display(self) -> None:
        """Time the monitor's own ``update_display()``."""
        counter = self.sent_bytes
        before = counter() if counter is not None else 0
        start = time.perf_counter()
        self.refresh_times.append(start)
        try:
            super().update_display()
        finally:
            self.refresh_durations.append(time.perf_counter() - start)
            if counter is not None:
                self.refresh_bytes.append(counter() - before)

    def process_batch(self, records: list[bytes]) -> None:
        """Process as the monitor does, then count."""
        super().process_batch(records)
        self.batch_readouts += len(records)
        self.last_batch_time = time.perf_counter()


# --------------------------------------------------------------------------
# The senders: bench_udp's Sender protocol, with cheaper processes


class _IdBlockSender(bench_udp._BlockSender):
    """Send one prebuilt block of records again and again, only the ids renewed.

    The records are built once in the ``sendmmsg`` slots; for each block a
    single numpy operation writes the consecutive ids into them in place, so
    the process spends its time in the kernel rather than in Python (measured
    on a 2-CPU machine: 1.4 times the rate of bench_udp's sender, which builds
    every record, when alone; about 3 times while a monitor runs beside it).
    Without ``sendmmsg`` the records are rebuilt and sent one by one.
    """

    def __init__(self, port: int, data: Sequence[bytes], block: int = BLOCK) -> None:
        slot = max(64, max(len(d) for d in data) + RECORD_HEADER_SIZE)
        super().__init__(port, block, slot)
        stamp = time.time_ns()
        pack = bench_udp._RECORD.pack
        self.records = [pack(RECORD_HEADER, 0, stamp, len(d)) + d for d in itertools.islice(itertools.cycle(data), block)]
        self._ids: np.ndarray | None = None
        if self._sendmmsg is None:
            return
        slots = np.frombuffer(self._buf, dtype=np.uint8)
        for i, record in enumerate(self.records):
            slots[i * slot : i * slot + len(record)] = np.frombuffer(record, dtype=np.uint8)
            self._iovs[i].iov_len = len(record)
        # The id field (bytes 3-6, little endian) of every slot, as one strided view.
        self._ids = np.ndarray((block,), dtype="<u4", buffer=self._buf, offset=3, strides=(slot,))
        self._steps = np.arange(block, dtype=np.uint32)

    def send_block(self, first_id: int) -> int:
        """Send the block with ids ``first_id, first_id + 1, ...``; returns how many."""
        ids = self._ids
        if ids is None:
            return self.send([r[:3] + (first_id + i).to_bytes(4, "little") + r[7:] for i, r in enumerate(self.records)])
        np.add(self._steps, first_id, out=ids)
        return self.send_slots(self.block)


def _next_ids(counter: Any, state: list[int], block: int) -> int:
    """The first id of the next block: from the shared counter, or the process's own."""
    if counter is None:
        first = state[0]
        state[0] = first + block
        return first
    with counter.get_lock():
        first = counter.value
        counter.value = first + block
    return first


def _send_blocks(port: int, rate: float, seconds: float, data: list[bytes], counter: Any, first_id: int, conn: Any) -> None:
    """A sender process: blocks of consecutive ids at ``rate`` (0: flat out) for ``seconds``.

    Several processes share ``counter``, taking the ids block by block in
    the order they send. Says ``"ready"`` on ``conn``, waits for the go,
    answers ``(sent, elapsed)``.
    """
    tx = _IdBlockSender(port, data)
    own = [first_id]
    try:
        conn.send("ready")
        conn.recv()
        start = time.monotonic()
        sent = 0
        while True:
            now = time.monotonic()
            if now - start >= seconds:
                break
            if rate > 0 and start + sent / rate > now:
                time.sleep(start + sent / rate - now)
            sent += tx.send_block(_next_ids(counter, own, tx.block))
        elapsed = time.monotonic() - start
    finally:
        tx.close()
    conn.send((sent, elapsed))
    conn.close()


class SoakSender(bench_udp.Sender):
    """Sender processes (spawned) offering ``rate`` readouts/s in all, ids from ``first_id``.

    Same use as :class:`bench_udp.Sender` (``go``, ``done``, ``wait``,
    ``send_tail``), with :func:`_send_blocks` processes; :meth:`terminate`
    ends them by their handles whatever state they are in.
    """

    def __init__(
        self, port: int, rate: float, seconds: float, data: list[bytes], processes: int = 1, first_id: int = 0
    ) -> None:
        ctx = mp.get_context("spawn")
        self.port = port
        self.data = data
        self.first_id = first_id
        #: Shared next id of several processes (None for one: no lock needed).
        self.counter = ctx.Value("Q", first_id) if processes > 1 else None
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        self.results: list[tuple[int, float] | None] = [None] * processes
        try:
            for k in range(processes):
                here, there = ctx.Pipe()
                self.conns.append(here)
                args = (port, rate / processes, seconds, data, self.counter, first_id, there)
                proc = ctx.Process(target=_send_blocks, args=args, name=f"soak-sender-{k}", daemon=True)
                try:
                    proc.start()
                finally:
                    there.close()
                self.procs.append(proc)
        except BaseException:
            self.terminate()
            raise

    def go(self, timeout: float = 60.0) -> None:
        """Wait until every process is ready to send, then start them all."""
        for proc, conn in zip(self.procs, self.conns):
            try:
                ready = conn.poll(timeout) and conn.recv() == "ready"
            except EOFError:  # the process ended
                ready = False
            if not ready:
                msg = f"sender process {proc.name} did not get ready (exit code {proc.exitcode})"
                raise RuntimeError(msg)
        super().go()

    def ids_taken(self) -> int | None:
        """Ids handed out by the shared counter so far (None with one process)."""
        return None if self.counter is None else self.counter.value - self.first_id

    def terminate(self) -> None:
        """End every sender process (terminate, then kill) and close the pipes; harmless twice."""
        for proc in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for conn in self.conns:
            conn.close()


# --------------------------------------------------------------------------
# Measurements


def prefill_capacity(n: int, data: list[bytes], repeats: int) -> list[tuple[float, int]]:
    """Readouts/s of a monitor started on a socket already holding ``n`` records.

    Times ``start()`` until the last record went through ``process_batch``.
    Returns ``(rate, readouts processed)`` for each run: fewer than ``n``
    when the socket could not hold them all (the kernel caps its buffer for
    a user without CAP_NET_ADMIN); the rate counts what was processed.
    """
    runs = []
    for _ in range(repeats):
        mon = SoakMonitor(port=0, rcvbuf=bench_udp._FILL_RCVBUF)  # a socket that holds all the records
        try:
            # The monitor has no public way to bind without receiving: its
            # listener is opened here so that the records wait in the socket.
            mon.engine.listener.open()
            bench_udp.fill(mon.port, n, data)
            start = time.perf_counter()
            mon.start(refresh_interval=REFRESH_INTERVAL)
            progress, idle_since = -1, time.monotonic()
            while mon.batch_readouts < n and time.monotonic() - idle_since < 2.0:
                if mon.batch_readouts != progress:
                    progress, idle_since = mon.batch_readouts, time.monotonic()
                time.sleep(0.001)
            end = mon.last_batch_time
        finally:
            mon.close()
        if mon.batch_readouts and end is not None:
            runs.append((mon.batch_readouts / (end - start), mon.batch_readouts))
    return runs


@dataclasses.dataclass
class SoakRun:
    """What :func:`run_soak` measured; times are ``time.perf_counter()`` values."""

    #: Every record sent: lead-in, senders, tail.
    sent: int
    #: Records the sender processes sent, and their longest sending time (s).
    sent_by_senders: int
    send_seconds: float
    #: Ids the shared counter handed out (None with one sender process).
    ids_taken: int | None
    #: When the senders were told to go, and when the last one was done.
    t_go: float
    t_end: float
    #: Readouts processed by the monitor between t_go and t_end.
    processed_meanwhile: int
    #: (seconds since t_go, VmRSS in KiB), the first taken just before t_go.
    rss: list[tuple[float, int]]
    #: Latency of each trivial cell beyond its sleep (s).
    cell_latency: list[float]

    @property
    def offered_rate(self) -> float:
        """Readouts/s the senders reached."""
        return self.sent_by_senders / self.send_seconds if self.send_seconds > 0 else 0.0

    @property
    def processed_rate(self) -> float:
        """Readouts/s the monitor processed while the senders ran."""
        span = self.t_end - self.t_go
        return self.processed_meanwhile / span if span > 0 else 0.0

    def refreshes(self, mon: SoakMonitor) -> tuple[list[float], list[float], list[int]]:
        """Times, durations and bytes of the refreshes made while the senders ran."""
        chosen = [i for i, t in enumerate(mon.refresh_times) if self.t_go <= t <= self.t_end]
        times = [mon.refresh_times[i] for i in chosen]
        durations = [mon.refresh_durations[i] for i in chosen if i < len(mon.refresh_durations)]
        sizes = [mon.refresh_bytes[i] for i in chosen if i < len(mon.refresh_bytes)]
        return times, durations, sizes


def run_soak(
    mon: SoakMonitor,
    rate: float,
    seconds: float,
    data: list[bytes],
    processes: int = 1,
    *,
    cell_period: float = CELL_PERIOD,
    rss_period: float = RSS_PERIOD,
) -> SoakRun:
    """Feed the running ``mon`` at ``rate`` readouts/s (0: flat out) for ``seconds``.

    Sends ``LEAD_IN`` records slowly, then runs ``processes`` sender
    processes, then ``TAIL`` records slowly with the next ids, and waits
    until the monitor's listener has been quiet and its buffer is empty.
    Meanwhile, in the calling thread, runs :func:`trivial_cell` every
    ``cell_period`` and samples VmRSS every ``rss_period``. The sender
    processes are ended in every case. The monitor keeps running: stop it to
    count what it holds.
    """
    sender = SoakSender(mon.port, rate, seconds, data, processes, first_id=LEAD_IN)
    try:
        sender.send_tail(0, LEAD_IN)  # ids 0.. in order: the listener's baseline
        rss = [(0.0, bench_udp.vm_rss_kib())]
        latency: list[float] = []
        before = mon.batch_readouts
        sender.go()  # once every process is ready
        t_go = time.perf_counter()
        next_sample = t_go + rss_period
        deadline = t_go + seconds + 60.0
        while not sender.done():
            start = time.perf_counter()
            trivial_cell()
            time.sleep(cell_period)
            now = time.perf_counter()
            latency.append(now - start - cell_period)
            if now >= next_sample:
                rss.append((now - t_go, bench_udp.vm_rss_kib()))
                next_sample += rss_period
            if now > deadline:
                msg = "the sender processes did not finish"
                raise RuntimeError(msg)
        t_end = time.perf_counter()
        processed = mon.batch_readouts - before
        by_senders, send_seconds = sender.wait()
        sender.send_tail(LEAD_IN + by_senders, TAIL)
        total = LEAD_IN + by_senders + TAIL
        bench_udp.wait_quiet(SimpleNamespace(stats=mon.listener_stats), total)
    finally:
        sender.terminate()
    return SoakRun(
        sent=total,
        sent_by_senders=by_senders,
        send_seconds=send_seconds,
        ids_taken=sender.ids_taken(),
        t_go=t_go,
        t_end=t_end,
        processed_meanwhile=processed,
        rss=rss,
        cell_latency=latency,
    )


@dataclasses.dataclass(frozen=True)
class Accounting:
    """Where every readout sent went, from a stopped monitor's counters."""

    sent: int
    processed: int
    lost: int
    dropped: int
    malformed: int
    out_of_order: int
    restarts: int
    #: The listener's own identities held (datagrams = accepted + malformed,
    #: accepted = processed + dropped + buffered), and it handed out what the monitor processed.
    listener_consistent: bool

    @classmethod
    def of(cls, mon: AstroPix4SimpleMonitor, sent: int) -> Accounting:
        """Read the counters of ``mon`` (stopped: ``stop()`` processed what was buffered)."""
        stats = mon.listener_stats()
        consistent = (
            stats.datagrams == stats.accepted + stats.malformed
            and stats.accepted == stats.processed + stats.dropped + stats.buffered
            and stats.processed == mon.num_readouts
        )
        return cls(
            sent=sent,
            processed=mon.num_readouts,
            lost=mon.lost_readouts,
            dropped=mon.dropped_readouts,
            malformed=mon.malformed_packets,
            out_of_order=stats.out_of_order,
            restarts=stats.restarts,
            listener_consistent=consistent,
        )

    @property
    def exact(self) -> bool:
        """``sent == processed + lost + dropped``, nothing malformed."""
        return self.sent == self.processed + self.lost + self.dropped and self.malformed == 0


# --------------------------------------------------------------------------
# The report


def _ms(values: Sequence[float]) -> str:
    """median / p99 / max of seconds, in ms."""
    if not values:
        return "none"
    a = np.asarray(values) * 1e3
    return f"median {np.median(a):.1f} ms, p99 {np.percentile(a, 99):.1f} ms, max {a.max():.1f} ms"


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def _mib(kib: float) -> float:
    return kib / 1024


def _flat_out(data: list[bytes], seconds: float) -> tuple[float, float, int, int]:
    """One sender process flat out into a running monitor: (offered/s, processed/s, lost, dropped)."""
    mon = SoakMonitor(port=0).start(refresh_interval=REFRESH_INTERVAL)
    try:
        run = run_soak(mon, 0, seconds, data, 1, rss_period=math.inf)
        mon.stop()
    finally:
        mon.close()
    return run.offered_rate, run.processed_rate, mon.lost_readouts, mon.dropped_readouts


def _leftovers() -> list[str]:
    """Threads and child processes of this process still alive."""
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    children = [p.name for p in mp.active_children()]
    return threads + children


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="length of the soak (default 60; 10 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a short soak and shorter measurements")
    parser.add_argument(
        "--senders", type=int, default=0, help="sender processes (default 0: as many as the target needs, at most CPUs + 1)"
    )
    parser.add_argument(
        "--hits-per-readout",
        type=float,
        default=None,
        metavar="K",
        help="simulated readouts with K hits on average (default: the real data's readouts, one hit each); "
        "heavier readouts lower the monitor's capacity, so that the senders can offer twice of it",
    )
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (10.0 if args.quick else 60.0)
    cpus = os.cpu_count() or 1
    t_start = time.monotonic()
    print(
        f"machine: {platform.platform()}, {cpus} cpus, Python {platform.python_version()}, numpy {np.__version__}",
        flush=True,
    )
    if args.hits_per_readout is None:
        data = bench_udp.payloads()
        kind = "real data" if len(data) > 1 else "synthetic"
    else:
        run0 = AstroPix4Simulator(seed=11, hits_per_readout=args.hits_per_readout).generate(1024)
        data = [record[RECORD_HEADER_SIZE:] for record in run0.records]
        kind = f"simulated, {len(run0.truth) / len(data):.1f} hits per readout"
    size = statistics.mean(len(d) for d in data) + RECORD_HEADER_SIZE
    print(f"records: {size:.1f} bytes on average ({kind}); refresh_interval {REFRESH_INTERVAL} s")

    # Count the widget state each refresh sends, as bench_monitor does.
    import comm
    from bench_monitor import _CountingComm

    comm.create_comm = _CountingComm

    # ---- 1. capacity
    n_fill, repeats = (100_000, 3) if args.quick else (200_000, 5)
    runs = prefill_capacity(n_fill, data, repeats)
    if not runs:
        print("capacity: no run processed anything; cannot go on")
        return 0
    capacity = statistics.median(rate for rate, _ in runs)
    held = min(count for _, count in runs)
    print(
        f"\n1. capacity of a running AstroPix4SimpleMonitor (socket prefilled with {n_fill:,} records, "
        f"median of {len(runs)}): {capacity:,.0f} readouts/s (runs: {', '.join(f'{r:,.0f}' for r, _ in runs)})"
        + (f"; the socket held only {held:,} of them" if held < n_fill else "")
    )
    one_offered, one_processed, one_lost, one_dropped = _flat_out(data, 2.0 if args.quick else 4.0)
    print(
        f"   one sender process flat out into a running monitor: offered {one_offered:,.0f}/s, "
        f"processed {one_processed:,.0f}/s meanwhile, lost {one_lost:,}, dropped {one_dropped:,}"
    )

    # ---- 2. the soak
    target = 2 * capacity
    processes = args.senders or max(1, min(cpus + 1, math.ceil(target / max(one_offered, 1.0))))
    print(
        f"\n2. soak: target {target:,.0f} readouts/s (2 x capacity) for {seconds:g} s from {processes} sender "
        f"process{'es' if processes > 1 else ''}, into a running monitor; VmRSS every {RSS_PERIOD:g} s, "
        f"a trivial cell every {CELL_PERIOD * 1e3:g} ms",
        flush=True,
    )
    mon = SoakMonitor(port=0)
    mon.sent_bytes = lambda: _CountingComm.sent_bytes
    try:
        mon.start(refresh_interval=REFRESH_INTERVAL)
        run = run_soak(mon, target, seconds, data, processes)
        mon.stop()
        rss_after = bench_udp.vm_rss_kib()
        acc = Accounting.of(mon, run.sent)
        refresh_times, durations, sizes = run.refreshes(mon)
    finally:
        mon.close()

    ratio = run.offered_rate / capacity
    print(
        f"   offered {run.sent_by_senders:,} readouts in {run.send_seconds:.1f} s: {run.offered_rate:,.0f}/s = "
        f"{ratio:.2f} x capacity (target 2.00: {'reached' if ratio >= 1.95 else 'NOT reached'}); "
        f"the monitor processed {run.processed_rate:,.0f}/s meanwhile: offered/processed = "
        f"{run.offered_rate / max(run.processed_rate, 1.0):.2f}"
    )
    if run.ids_taken is not None and run.ids_taken != run.sent_by_senders:
        print(f"   WARNING: the senders report {run.sent_by_senders:,} sent but took {run.ids_taken:,} ids")

    # ---- 3. figures
    print("\n3. figures")
    samples = run.rss
    start_kib = samples[0][1]
    series = [f"{t:.0f}s {_mib(k):.1f}" for t, k in samples if t == 0.0 or round(t) % 5 == 0]
    print(f"   VmRSS (MiB) every 5 s: {', '.join(series)}; after stop {_mib(rss_after):.1f}")
    half = run.send_seconds / 2
    first = [k for t, k in samples if t <= half] or [start_kib]
    second = [k for t, k in samples if t > half] or first
    peak = max(k for _, k in samples)
    growth_second = _mib(max(second) - max(first))
    plateau = growth_second <= PLATEAU_MIB
    print(
        f"   VmRSS: start {_mib(start_kib):.1f} MiB, peak {_mib(peak):.1f} MiB (growth {_mib(peak - start_kib):+.1f} MiB), "
        f"end {_mib(samples[-1][1]):.1f} MiB ({_mib(samples[-1][1] - peak):+.1f} vs peak); max of the second half vs "
        f"max of the first half: {growth_second:+.1f} MiB"
    )
    print(
        f"   readouts: sent {acc.sent:,} = processed {acc.processed:,} + lost (kernel drops, id gaps) {acc.lost:,} + "
        f"dropped (listener buffer full) {acc.dropped:,} -> {acc.processed + acc.lost + acc.dropped:,}: "
        f"{'EXACT' if acc.exact else 'MISMATCH'}; malformed {acc.malformed}, out of order {acc.out_of_order:,}, "
        f"DAQ restarts {acc.restarts}, listener counters consistent: {acc.listener_consistent}"
    )
    intervals = list(np.diff(refresh_times)) if len(refresh_times) > 1 else []
    print(
        f"   refreshes while sending: {len(refresh_times)}; interval {_ms(intervals)} "
        f"(refresh_interval {REFRESH_INTERVAL * 1e3:.0f} ms)"
    )
    if durations:
        d_ms = np.asarray(durations) * 1e3
        line = f"   update_display(): median {np.median(d_ms):.1f} ms, max {d_ms.max():.1f} ms"
        if sizes:
            line += f"; widget state sent per refresh: median {np.median(sizes) / 1e3:.1f} kB, max {max(sizes) / 1e3:.1f} kB"
        print(line)
    cells = len(run.cell_latency)
    print(f"   trivial cell every {CELL_PERIOD * 1e3:g} ms ({cells:,} cells): latency {_ms(run.cell_latency)}")

    p99_interval = float(np.percentile(intervals, 99)) if intervals else math.inf
    p99_cell = float(np.percentile(run.cell_latency, 99)) * 1e3 if run.cell_latency else math.inf
    print("\nverdicts")
    print(f"   memory plateau (second-half growth <= {PLATEAU_MIB:g} MiB): {_verdict(plateau)}")
    print(f"   exact accounting (sent = processed + lost + dropped, malformed 0): {_verdict(acc.exact)}")
    on_time = p99_interval < 2 * REFRESH_INTERVAL
    print(f"   refresh interval p99 < {2 * REFRESH_INTERVAL:g} s: {_verdict(on_time)} ({p99_interval:.3f} s)")
    print(f"   trivial cell p99 < {CELL_TARGET_MS:g} ms: {_verdict(p99_cell < CELL_TARGET_MS)} ({p99_cell:.1f} ms)")
    left = _leftovers()
    left_text = ", ".join(left) if left else "no thread, no child process"
    print(f"\nleft behind: {left_text}; total time {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
