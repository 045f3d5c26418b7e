"""Benchmark of the monitor's CPU: idle, 1,000 and 10,000 readouts/s, the code of before side by side.

Run: ``python benchmarks/bench_cpu.py [--quick] [--before REV] [--collab PATH [--collab-only]]``. Each
measurement runs in a fresh Python process (the monitor's process) while a
sender in another process sends real-data readouts (the real file's records,
ids renumbered; a synthetic one-hit readout when the file is absent) over
loopback. The monitor's CPU is its process's user + system time over the
measured interval (``time.process_time()``, every thread), divided by the wall time: the listener,
the processing thread and the refreshes (default 0.5 s refresh), nothing of
the sender. Two monitors: the bare ``MonitorEngine`` and an
``AstroPix4SimpleMonitor`` with its widget built and refreshed but no browser
(a plain Python process: widget messages go to no front end). Idle is
measured from 5 s after the start (the steady state: the first refreshes
draw everything once, and the "no data" warning appears at 5 s).

Each figure is measured for the code of this work tree and for the code of
``--before`` (default ``d6b6ea0``, before the processing thread stopped
polling every 5 ms), extracted with ``git archive`` into a temporary folder
and run the same way, so the ratios come from one run.

Also, in the same run and for both versions: the latency from a datagram sent
to its hit in ``hit_map`` (p50, p99; a probe readout of chip 7 every 10 ms
inside a 1,000 readouts/s stream (every tenth readout), its send time taken by the sender just
before ``sendto``, the arrival seen by a thread of the monitor's process
reading the chip-7 count every 0.2 ms) and a zero-loss check at 300,000
readouts/s for 5 s (sent with ``sendmmsg`` as in bench_udp.py; lost and
dropped must be 0). bench_udp.py measures the listener's capacity in more
detail.

Targets (issue 14, point 4): at most 2% of a core at 1,000 readouts/s, 4% at
10,000, 0.2% idle; latency p99 under 10 ms; zero loss at 300,000 readouts/s.

Section 4, the collaboration's own monitor (``astropix_analysis.monitor``,
https://github.com/AstroPix/astropix-analysis, not on PyPI) beside ours:
``--collab PATH`` (or the environment variable ``ASTROPIX_ANALYSIS_PATH``)
names a checkout of it, whose dependencies (loguru, astropy, matplotlib)
must be importable; ``--collab-only`` runs this section alone. Its
``AstroPix4SimpleMonitor`` runs as a user runs it (constructed, then its
blocking ``start()`` with its defaults, 0.5 s refresh) in its own process on
matplotlib's Agg backend (no screen; each refresh still draws the figure, in
memory), measured the same way as ours (its process's CPU, a thread of that
process reading the clock and its counters), idle and at 1,000 readouts/s of
16-hit readouts made by our simulator, beside our ``MonitorEngine`` and
``AstroPix4SimpleMonitor`` on the same stream, two rounds interleaved. The
readouts and hits each monitor counted and their hit maps are compared with
what was sent. Without a checkout, one line says it was not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REAL_APX = REPO.parent / "shared" / "astropix-data" / "20250723_092534_data.apx"
#: Record framing (docs/format.md section 1): magic, id, timestamp, data length.
_HEADER = struct.Struct("<3sIQI")
_MAGIC = b"APX"
PROBE_CHIP = 7
PROBE_PERIOD = 0.01


# --------------------------------------------------------------------------
# The sender (another process; run with this work tree's code)


def _payloads() -> tuple[list[bytes], bytes, str]:
    """Data of real readouts (or a synthetic one-hit readout) and the probe readout's data."""
    from astropix_nbmonitor.record import RECORD_HEADER_SIZE
    from astropix_nbmonitor.sim import AstroPix4Simulator

    probe = AstroPix4Simulator(seed=5, chip_ids=(PROBE_CHIP,), hits_per_readout=1, fixed_hits=True).generate(1).records[0]
    if REAL_APX.is_file():
        from astropix_nbmonitor.fileio import apx_open

        with apx_open(REAL_APX) as reader:
            data = [r[RECORD_HEADER_SIZE:] for r in reader.records()]
        return data, probe[RECORD_HEADER_SIZE:], "real file"
    run = AstroPix4Simulator(seed=1, hits_per_readout=1.0, fixed_hits=True).generate(500)
    return [r[RECORD_HEADER_SIZE:] for r in run.records], probe[RECORD_HEADER_SIZE:], "simulated (real file absent)"


def sender_main(port: int, rate: float, seconds: float, probes: bool) -> None:
    """Send readouts with consecutive ids at ``rate`` for ``seconds``; print JSON (sent, probe send times)."""
    from astropix_nbmonitor.record import RECORD_MAGIC, RECORD_STRUCT

    data, probe, _ = _payloads()
    pack = RECORD_STRUCT.pack
    sent = 0
    probe_times: list[float] = []
    if rate >= 50_000:
        sys.path.insert(0, str(HERE))
        from bench_udp import _BlockSender

        block = 256
        tx = _BlockSender(port, block, 64 + max(map(len, data)))
        t0 = time.monotonic()
        while time.monotonic() < t0 + seconds:
            due = t0 + sent / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            tx.send([pack(RECORD_MAGIC, i, 0, len(d)) + d for i in range(sent, sent + block) for d in (data[i % len(data)],)])
            sent += block
        tx.close()
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        address = ("127.0.0.1", port)
        t0 = time.monotonic()
        next_probe = t0 + PROBE_PERIOD
        while True:
            now = time.monotonic()
            if now >= t0 + seconds:
                break
            due = t0 + sent / rate
            if due > now:
                time.sleep(due - now)
            if probes and time.monotonic() >= next_probe:
                record = pack(RECORD_MAGIC, sent, 0, len(probe)) + probe
                probe_times.append(time.monotonic())
                next_probe += PROBE_PERIOD
            else:
                d = data[sent % len(data)]
                record = pack(RECORD_MAGIC, sent, 0, len(d)) + d
            sock.sendto(record, address)
            sent += 1
        sock.close()
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0, "probes": probe_times}), flush=True)


# --------------------------------------------------------------------------
# The monitor's process (run with the code measured)


def _make(kind: str):
    if kind == "engine":
        from astropix_nbmonitor.engine import MonitorEngine

        mon = eng = MonitorEngine(port=0)
    else:
        from astropix_nbmonitor.monitor import AstroPix4SimpleMonitor

        mon = AstroPix4SimpleMonitor(port=0)
        eng = mon.engine
    coalesce = os.environ.get("BENCH_CPU_COALESCE")
    if coalesce is not None and hasattr(eng.listener, "coalesce"):
        eng.listener.coalesce = float(coalesce)  # read when the listener's loop starts
    return mon, eng


def _start_sender(port: int, rate: float, seconds: float, probes: bool = False) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--sender", str(port), str(rate), str(seconds)]
    if probes:
        cmd.append("--probes")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)


def _cpu() -> float:
    return time.process_time()  # every thread of the process, user + system (CLOCK_PROCESS_CPUTIME_ID)


def child_cpu(kind: str, seconds: float) -> dict:
    """CPU share of the monitor's process: idle, then 1,000 and 10,000 readouts/s."""
    mon, eng = _make(kind)
    mon.start()
    out: dict = {}
    try:
        # Idle is the steady state: the first refreshes draw everything once, and the
        # dashboard's "no data" warning comes after 5 s; measured after those.
        time.sleep(5.0)
        for label, rate in (("idle", 0.0), ("1k", 1_000.0), ("10k", 10_000.0)):
            if rate:
                time.sleep(0.5)
            sender = _start_sender(eng.port, rate, seconds + 1.5) if rate else None
            time.sleep(1.0)  # the sender's start-up and the monitor's first batches
            w0, c0 = time.monotonic(), _cpu()
            n0 = eng.num_readouts
            turns0 = getattr(eng, "process_wakeups", None)
            time.sleep(seconds)
            w1, c1 = time.monotonic(), _cpu()
            n1 = eng.num_readouts
            turns1 = getattr(eng, "process_wakeups", None)
            if sender is not None:
                sender.communicate(timeout=60)
                time.sleep(0.3)
            stats = eng.listener.stats()
            out[label] = {
                "cpu": (c1 - c0) / (w1 - w0),
                "readouts_per_s": (n1 - n0) / (w1 - w0),
                "turns_per_s": None if turns0 is None else (turns1 - turns0) / (w1 - w0),
                "lost": stats.lost,
                "dropped": stats.dropped,
            }
    finally:
        mon.stop()
        mon.close()
    return out


def child_latency(kind: str, seconds: float) -> dict:
    """Datagram sent -> its hit in hit_map: probe readouts of chip 7 in a 1,000 readouts/s stream."""
    import numpy as np

    mon, eng = _make(kind)
    mon.start()
    seen: list[float] = []
    done = threading.Event()
    view = eng.accumulator._maps.view()  # read without the lock: a count only grows
    catch_up = getattr(eng, "catch_up", lambda: 0)  # what hit_map() does first (read-time catch-up), if any

    def watch() -> None:
        last = 0
        while not done.is_set():
            catch_up()
            count = int(view[PROBE_CHIP].sum())
            if count > last:
                now = time.monotonic()
                seen.extend([now] * (count - last))
                last = count
            time.sleep(0.0002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        sender = _start_sender(eng.port, 1_000.0, seconds, probes=True)
        out, _ = sender.communicate(timeout=120)
        time.sleep(0.5)
    finally:
        done.set()
        watcher.join()
        mon.stop()
        mon.close()
    probes = json.loads(out.strip().splitlines()[-1])["probes"]
    n = min(len(probes), len(seen))
    lat = (np.array(seen[:n]) - np.array(probes[:n])) * 1e3
    return {"n": n, "sent": len(probes), "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "max": float(lat.max())}


def child_capacity(kind: str, rate: float, seconds: float) -> dict:
    """Lost and dropped readouts at ``rate`` for ``seconds``."""
    mon, eng = _make(kind)
    mon.start()
    try:
        sender = _start_sender(eng.port, rate, seconds)
        out, _ = sender.communicate(timeout=120)
        reply = json.loads(out.strip().splitlines()[-1])
        sent = reply["sent"]
        deadline = time.monotonic() + 10
        while eng.num_readouts < sent and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        stats = eng.listener.stats()
        return {"sent": sent, "seconds": reply["seconds"], "processed": eng.num_readouts, "lost": stats.lost,
                "dropped": stats.dropped, "rcvbuf": stats.rcvbuf}
    finally:
        mon.stop()
        mon.close()


# --------------------------------------------------------------------------
# 4. The collaboration's monitor beside ours (--collab PATH)
#
# The same measurement (the monitor's process's CPU over the interval, a sender
# in another process) at 1,000 readouts/s of 16-hit readouts, for our
# MonitorEngine and AstroPix4SimpleMonitor and for the collaboration's
# astropix_analysis.monitor.AstroPix4SimpleMonitor, run as its users run it
# (constructed, then its blocking start() loop in the main thread, its default
# refresh), matplotlib on the Agg backend (no screen: its plt.pause still draws
# the figure, into memory).

COLLAB_ENV = "ASTROPIX_ANALYSIS_PATH"
COLLAB_URL = "https://github.com/AstroPix/astropix-analysis"
DENSE_HITS = 16
DENSE_RATE = 1_000.0
#: Distinct simulated readouts the dense sender cycles through (ids renumbered).
DENSE_POOL = 1_000
#: How long a monitor may take, after the sender stopped, to process its backlog.
DENSE_DRAIN = 240.0


def _dense_data(hits: int) -> list[bytes]:
    """Board bytes of ``DENSE_POOL`` simulated readouts of exactly ``hits`` hits each (no faults)."""
    from astropix_nbmonitor.record import RECORD_HEADER_SIZE
    from astropix_nbmonitor.sim import AstroPix4Simulator

    run = AstroPix4Simulator(seed=16, hits_per_readout=hits, fixed_hits=True).generate(DENSE_POOL)
    return [r[RECORD_HEADER_SIZE:] for r in run.records]


def dense_sender_main(port: int, rate: float, count: int, hits: int) -> None:
    """Send exactly ``count`` readouts of ``hits`` hits at ``rate``, ids 0.. consecutive; print JSON."""
    from astropix_nbmonitor.record import RECORD_MAGIC, RECORD_STRUCT

    data = _dense_data(hits)
    pack = RECORD_STRUCT.pack
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    address = ("127.0.0.1", port)
    t0 = time.monotonic()
    for i in range(count):
        due = t0 + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        d = data[i % len(data)]
        sock.sendto(pack(RECORD_MAGIC, i, 0, len(d)) + d, address)
    sock.close()
    print(json.dumps({"sent": count, "seconds": time.monotonic() - t0}), flush=True)


def _start_dense_sender(port: int, rate: float, count: int, hits: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--dense-sender", str(port), str(rate), str(count), str(hits)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)


def _thread_cpu(threads: dict) -> dict:
    """CPU time (s) of each named thread, by its pthread CPU clock (Linux); empty where unavailable."""
    out = {}
    for name, thread in threads.items():
        try:
            out[name] = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (AttributeError, OSError, TypeError):
            pass
    return out


def _measure_dense(port: int, counts, seconds: float, rate: float, hits: int, backlog=None, threads=None) -> dict:
    """Idle, then ``rate`` readouts/s of ``hits`` hits: the process's CPU share and the counts.

    ``counts()`` returns (readouts, hits) processed so far; ``backlog()`` the
    readouts received but not yet processed; ``threads`` names threads whose
    own CPU is reported too. After the measured interval the sender finishes
    and the monitor is given up to ``DENSE_DRAIN`` s to process what it
    received, so that its totals can be compared with what was sent.
    """
    threads = threads or {}
    out: dict = {}
    time.sleep(1.0)
    w0, c0, t0 = time.monotonic(), _cpu(), _thread_cpu(threads)
    time.sleep(seconds)
    w1, c1, t1 = time.monotonic(), _cpu(), _thread_cpu(threads)
    out["idle"] = {"cpu": (c1 - c0) / (w1 - w0), "threads": {k: (t1[k] - t0[k]) / (w1 - w0) for k in t1}}
    count = int(rate * (seconds + 2.5))  # 1 s of start-up, the interval, 1.5 s after it
    sender = _start_dense_sender(port, rate, count, hits)
    time.sleep(1.0)
    w0, c0, t0, (r0, h0) = time.monotonic(), _cpu(), _thread_cpu(threads), counts()
    time.sleep(seconds)
    w1, c1, t1, (r1, h1) = time.monotonic(), _cpu(), _thread_cpu(threads), counts()
    queued = None if backlog is None else backlog()
    reply = json.loads(sender.communicate(timeout=120)[0].strip().splitlines()[-1])
    sent = reply["sent"]
    behind_at_stop = sent - counts()[0]
    drain0 = time.monotonic()
    deadline = drain0 + DENSE_DRAIN
    last, still = counts()[0], time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now_count = counts()[0]
        if now_count >= sent:
            break
        if now_count != last:
            last, still = now_count, time.monotonic()
        elif time.monotonic() - still > 5.0 and (backlog is None or backlog() == 0):
            break  # nothing more is coming: the rest was lost before the monitor saw it
    total_readouts, total_hits = counts()
    out["stream"] = {
        "cpu": (c1 - c0) / (w1 - w0),
        "threads": {k: (t1[k] - t0[k]) / (w1 - w0) for k in t1},
        "readouts_per_s": (r1 - r0) / (w1 - w0),
        "hits_per_s": (h1 - h0) / (w1 - w0),
        "queued_at_end": queued,
        "sent": sent,
        "sender_rate": sent / reply["seconds"],
        "behind_when_sender_stopped": behind_at_stop,
        "drain_seconds": time.monotonic() - drain0,
        "readouts": total_readouts,
        "hits": total_hits,
    }
    return out


def _udp_drops(port: int) -> int | None:
    """Datagrams the kernel dropped at the UDP socket bound to 127.0.0.1:``port`` (Linux /proc/net/udp)."""
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == f"0100007F:{port:04X}":
                    return int(fields[-1])
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_dense(kind: str, seconds: float, rate: float, hits: int) -> dict:
    """Our monitor (``engine`` or ``widget``) on the dense stream; totals and hit map to compare."""
    mon, eng = _make(kind)
    mon.start()
    try:
        out = _measure_dense(eng.port, lambda: (eng.num_readouts, eng.num_hits), seconds, rate, hits)
        time.sleep(0.3)
        stats = eng.listener.stats()
        out["stream"].update(lost=stats.lost, dropped=stats.dropped, hit_map=eng.hit_map().values().T.astype(int).tolist())
    finally:
        mon.stop()
        mon.close()
    return out


def child_collab(seconds: float, rate: float, hits: int) -> None:
    """The collaboration's AstroPix4SimpleMonitor, run as a user runs it; print JSON and exit the process.

    Its ``start()`` never returns (a ``while True`` loop left by Ctrl-C), so it
    runs in the main thread as in its command-line application and a daemon
    thread of this process measures, prints the result and ends the process.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import astropix_analysis
        from astropix_analysis.monitor import AstroPix4SimpleMonitor
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which says what is missing
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return
    port = _free_udp_port()
    mon = AstroPix4SimpleMonitor(port=port)

    def measure() -> None:
        try:
            time.sleep(0.5)  # start() has started its listening thread
            listener = next((t for t in threading.enumerate() if "_listen" in t.name), None)
            threads = {"main loop (decode, fill, draw)": threading.main_thread()}
            if listener is not None:
                threads["listener (recvfrom, from_bytes)"] = listener
            out = _measure_dense(port, lambda: (mon._num_processed_readouts, mon._num_processed_hits), seconds,
                                 rate, hits, backlog=mon._readout_buffer.qsize, threads=threads)
            out["stream"]["hit_map"] = mon.hit_map._content.T.astype(int).tolist()
            out["stream"]["queued_after_drain"] = mon._readout_buffer.qsize()
            out["stream"]["socket_drops"] = _udp_drops(port)
            out["version"] = astropix_analysis.__version__
            out["backend"] = matplotlib.get_backend()
            out["matplotlib"] = matplotlib.__version__
            out["rcvbuf"] = mon._receiver.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            print(json.dumps(out), flush=True)
        except Exception as exc:  # noqa: BLE001
            print(json.dumps({"error": f"measurement failed: {type(exc).__name__}: {exc}"}), flush=True)
        finally:
            sys.stdout.flush()
            os._exit(0)

    threading.Thread(target=measure, daemon=True).start()
    mon.start()  # its defaults: refresh_interval=0.5 s, update_pause=0.005 s (bin/apx_monitor.py: --refresh 0.5)


def _collab_path(arg: str | None) -> Path | None:
    value = arg or os.environ.get(COLLAB_ENV)
    return Path(value).expanduser().resolve() if value else None


def _collab_revision(path: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h (%cs)"], capture_output=True,
                             text=True, check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain"], capture_output=True, text=True,
                               check=True, timeout=30).stdout.strip()
        return rev + (", with local changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"


def _run_collab_child(path: Path, seconds: float, rate: float, hits: int) -> dict:
    inherited = os.environ.get("PYTHONPATH")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join(filter(None, [str(path), inherited])))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "collab", "-", str(seconds), str(rate), str(hits)]
    with tempfile.TemporaryDirectory(prefix="bench-cpu-collab-") as cwd:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600 + DENSE_DRAIN, cwd=cwd)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        return {"error": f"no result (exit {proc.returncode}):\n{proc.stderr[-3000:]}"}
    return json.loads(lines[-1])


def _load() -> str:
    try:
        return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "load average unknown"


def collab_section(path: Path | None, seconds: float, rounds: int = 2) -> None:
    """Section 4: ours and the collaboration's monitor at the same 1,000 readouts/s of 16-hit readouts."""
    title = "\n4. the collaboration's monitor (astropix_analysis.monitor) beside ours"
    if path is None:
        print(f"{title}: not measured; to measure it, pass --collab PATH (or set {COLLAB_ENV}) to a checkout of "
              f"{COLLAB_URL} with its dependencies importable (loguru, astropy, matplotlib)")
        return
    if not (path / "astropix_analysis" / "monitor.py").is_file():
        print(f"{title}: not measured; {path} is not a checkout of {COLLAB_URL} (no astropix_analysis/monitor.py)")
        return
    rate, hits = DENSE_RATE, DENSE_HITS
    print(f"{title}: {rate:,.0f} readouts/s of {hits} hits (our simulator, fixed hits, no faults), "
          f"{seconds:g} s idle then {seconds:g} s of stream per figure; {rounds} rounds interleaved")
    print(f"   astropix-analysis at {path.name}: revision {_collab_revision(path)}; its monitor on matplotlib's Agg "
          f"backend, started with its defaults (refresh 0.5 s, pause 0.005 s)")
    print(f"   machine {_load()} (before)")
    results: dict = {"engine": [], "widget": [], "collab": []}
    for _ in range(rounds):
        res = _run_collab_child(path, seconds, rate, hits)
        if "error" in res:
            print(f"   the collaboration's monitor could not run: {res['error']}")
            print(f"   (not measured; make its package importable: its dependencies are listed in {path}/pyproject.toml)")
            return
        results["collab"].append(res)
        for kind in ("engine", "widget"):
            results[kind].append(_run_child(REPO, "dense", kind, str(seconds), str(rate), str(hits)))
    print(f"   machine {_load()} (after)")
    info = results["collab"][0]
    print(f"   astropix_analysis {info['version']}, matplotlib {info['matplotlib']} ({info['backend']}), "
          f"its socket's receive buffer {info['rcvbuf']:,} bytes")
    names = {"engine": "ours, MonitorEngine", "widget": "ours, AstroPix4SimpleMonitor (widget, no browser)",
             "collab": "theirs, AstroPix4SimpleMonitor (Agg)"}
    print(f"   {'monitor':<52}{'idle':>16}{'1,000/s x 16 hits':>22}{'processed/s':>16}{'CPU ms/readout':>18}")
    for kind, runs in results.items():
        idle = ", ".join(f"{100 * r['idle']['cpu']:.2f}%" for r in runs)
        busy = ", ".join(f"{100 * r['stream']['cpu']:.1f}%" for r in runs)
        done = ", ".join(f"{r['stream']['readouts_per_s']:,.0f}" for r in runs)
        each = ", ".join(f"{1e3 * r['stream']['cpu'] / max(r['stream']['readouts_per_s'], 1e-9):.3f}" for r in runs)
        print(f"   {names[kind]:<52}{idle:>16}{busy:>22}{done:>16}{each:>18}")
        behind = [r for r in runs if r["stream"]["readouts_per_s"] < 0.98 * rate]
        if behind:
            print(f"      ^ fell behind the stream in {len(behind)} of {len(runs)} rounds: its % of a core is what the "
                  f"machine gave it, not what the stream needs")
    mean = {k: sum(r["stream"]["cpu"] for r in v) / len(v) for k, v in results.items()}
    mean_idle = {k: sum(r["idle"]["cpu"] for r in v) / len(v) for k, v in results.items()}
    per = {k: sum(r["stream"]["cpu"] / max(r["stream"]["readouts_per_s"], 1e-9) for r in v) / len(v)
           for k, v in results.items()}
    for kind in ("engine", "widget"):
        print(f"   theirs / {names[kind]}: {mean['collab'] / mean[kind]:.1f}x the CPU at 1,000/s"
              f" ({100 * mean['collab']:.1f}% vs {100 * mean[kind]:.1f}%), {per['collab'] / per[kind]:.1f}x the CPU per"
              f" readout processed, {mean_idle['collab'] / max(mean_idle[kind], 1e-9):.0f}x idle")
    for i, r in enumerate(results["collab"], 1):
        s = r["stream"]
        per_thread = ", ".join(f"{k} {100 * v:.1f}%" for k, v in s["threads"].items())
        idle_threads = ", ".join(f"{k} {100 * v:.2f}%" for k, v in r["idle"]["threads"].items())
        print(f"   theirs, round {i}: threads at 1,000/s: {per_thread}; idle: {idle_threads}")
        print(f"      sender {s['sender_rate']:,.0f}/s; queued unprocessed at the end of the interval "
              f"{s['queued_at_end']:,}; {s['behind_when_sender_stopped']:,} readouts behind when the sender stopped, "
              f"caught up in {s['drain_seconds']:.1f} s")
    print("   counts after the stream (sent: readouts; hits expected = sent x 16):")
    maps = {}
    for kind, runs in results.items():
        for i, r in enumerate(runs, 1):
            s = r["stream"]
            ok = s["readouts"] == s["sent"] and s["hits"] == hits * s["sent"]
            extra = f", lost {s['lost']}, dropped {s['dropped']}" if "lost" in s else ""
            if s.get("socket_drops") is not None:
                extra += f", dropped by the kernel at its socket (receive buffer full) {s['socket_drops']:,}"
            print(f"      {names[kind]:<52} round {i}: sent {s['sent']:,}, processed {s['readouts']:,} readouts, "
                  f"{s['hits']:,} hits{extra}: {'all counted' if ok else 'NOT all counted'}")
            maps[(kind, i)] = s["hit_map"]
    differ = [f"{names[k]} round {i}" for (k, i), m in maps.items() if m != maps[("engine", 1)]]
    if not differ:
        print("   hit maps (rows x columns, every monitor and round): identical")
    else:
        print(f"   hit maps: identical except {'; '.join(differ)} (which did not count every readout sent)")


def collab_main(args: argparse.Namespace) -> None:
    """``--collab-only``: section 4 alone."""
    import numpy as np

    seconds = 5.0 if args.quick else 10.0
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, Python {platform.python_version()}, numpy {np.__version__}")
    collab_section(_collab_path(args.collab), seconds)


# --------------------------------------------------------------------------
# The parent: both versions, side by side


def _extract(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "astropix_nbmonitor"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _run_child(code: Path, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=str(code))
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 s per figure instead of 10 s")
    parser.add_argument("--before", default="d6b6ea0", help="the git revision to compare with (default d6b6ea0)")
    parser.add_argument("--collab", metavar="PATH", help="a checkout of astropix-analysis: measure its monitor beside"
                        f" ours (section 4); default: ${COLLAB_ENV}")
    parser.add_argument("--collab-only", action="store_true", help="section 4 alone")
    parser.add_argument("--sender", nargs=3, metavar=("PORT", "RATE", "SECONDS"), help=argparse.SUPPRESS)
    parser.add_argument("--dense-sender", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--probes", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sender:
        port, rate, seconds = args.sender
        sender_main(int(port), float(rate), float(seconds), args.probes)
        return
    if args.dense_sender:
        port, rate, count, hits = args.dense_sender
        dense_sender_main(int(port), float(rate), int(count), int(hits))
        return
    if args.child:
        what, kind, *rest = args.child
        if what == "cpu":
            result = child_cpu(kind, float(rest[0]))
        elif what == "collab":
            child_collab(float(rest[0]), float(rest[1]), int(rest[2]))
            return
        elif what == "dense":
            result = child_dense(kind, float(rest[0]), float(rest[1]), int(rest[2]))
        elif what == "latency":
            result = child_latency(kind, float(rest[0]))
        else:
            result = child_capacity(kind, float(rest[0]), float(rest[1]))
        print(json.dumps(result))
        return
    if args.collab_only:
        collab_main(args)
        return

    seconds = 5.0 if args.quick else 10.0
    import numpy as np

    _, _, source = _payloads()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cpus, Python {platform.python_version()}, numpy {np.__version__}")
    print(f"stream: {source}; {seconds:g} s per figure; before = {args.before}, now = this work tree")
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        versions = {"before": _extract(args.before, Path(tmp)), "now": REPO}
        cpu = {(v, k): _run_child(code, "cpu", k, str(seconds)) for k in ("engine", "widget") for v, code in versions.items()}
        print("\n1. CPU of the monitor's process (% of one core; user + system over wall time)")
        print(f"{'monitor':<10}{'stream':<14}{'before':>9}{'now':>9}{'now/before':>12}{'target':>8}"
              f"{'loop turns/s (before: -)':>28}{'readouts/s now':>16}")
        for kind in ("engine", "widget"):
            for label, name, target in (("idle", "idle", 0.2), ("1k", "1,000/s", 2.0), ("10k", "10,000/s", 4.0)):
                b, n = cpu[("before", kind)][label], cpu[("now", kind)][label]
                before_turns = "-" if b["turns_per_s"] is None else f"{b['turns_per_s']:,.0f}"
                turns = f"{before_turns}, {n['turns_per_s'] or 0:,.0f}"
                ratio = n["cpu"] / b["cpu"] if b["cpu"] > 0 else float("nan")
                met = "met" if 100 * n["cpu"] <= target else "NOT met"
                print(f"{kind:<10}{name:<14}{100 * b['cpu']:>8.2f}%{100 * n['cpu']:>8.2f}%{ratio:>11.2f}x"
                      f"{target:>6.1f}% {met:<8}{turns:>20}{n['readouts_per_s']:>16,.0f}")
        for (v, kind), res in cpu.items():
            bad = {k: (r["lost"], r["dropped"]) for k, r in res.items() if r["lost"] or r["dropped"]}
            if bad:
                print(f"   {v} {kind}: lost/dropped {bad}")
        print("\n2. latency, datagram sent -> its hit in hit_map (widget monitor, 1,000 readouts/s, a probe every 10 ms;"
              " twice, interleaved)")
        for v, code in [*versions.items(), *versions.items()]:
            lat = _run_child(code, "latency", "widget", str(seconds))
            print(f"   {v:<7} p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms "
                  f"over {lat['n']} probes (target p99 < 10 ms: {'met' if lat['p99'] < 10 else 'NOT met'})")
        print("\n3. zero loss at 300,000 real-data readouts/s for 5 s (widget monitor)")
        for v, code in versions.items():
            cap = _run_child(code, "capacity", "widget", "300000", "5")
            ok = cap["lost"] == 0 and cap["dropped"] == 0 and cap["processed"] == cap["sent"]
            offered = cap["sent"] / cap["seconds"]
            limited = " (the sender fell short of 300,000/s on this machine)" if offered < 0.97 * 300_000 else ""
            print(f"   {v:<7} sent {cap['sent']:,} = {offered:,.0f}/s{limited}, processed {cap['processed']:,}, "
                  f"lost {cap['lost']}, dropped {cap['dropped']} (receive buffer {cap['rcvbuf']:,} bytes): "
                  f"{'zero loss' if ok else 'LOSS'}")
    collab_section(_collab_path(args.collab), seconds)


if __name__ == "__main__":
    main()
