"""Benchmark of a night with the page closed: the Jupyter server's memory and the kernel's messages.

Run: ``python benchmarks/bench_night.py [--minutes M] [--rate R] [--cases 1,4]``
(default 3 minutes per case at 2,000 readouts/s, about 17 minutes; the long
mode is ``--minutes 60``, or ``--minutes 720 --cases 4`` for a real night of
the default setup). For each of four cases, side by side in one run:

1. JupyterLab is started as ``astropix-nbmonitor demo`` starts it (same
   options, isolated Jupyter state), with or without
   ``MappingKernelManager.buffer_offline_messages=False``;
2. chromium (playwright) opens a notebook that creates a live
   ``AstroPix4SimpleMonitor`` (0.5 s refresh) fed at ``--rate`` readouts/s
   by a simulated source in this process, runs it, waits until the monitor
   is live on the page, then closes the page;
3. for ``--minutes`` the server's resident memory (``VmRSS`` from
   ``/proc/PID/status``) is sampled every 5 s, and the kernel's messages are
   counted by a second client subscribed to the kernel's iopub channel
   (what the server receives and, with a page gone, buffers);
4. the server is stopped.

The cases (1 to 4): the server setting off and on, the kernel-side pause (display
updates stop when no view sent a heartbeat for 10 s) off (``mon.views.timeout
= inf`` in the notebook) and on. Printed per case: the server's RSS when the
page closed and at the end, its growth in MB/min (least squares over the
samples after the first 30 s), that rate over a 12-hour night, and the
kernel's comm messages and kB per minute after the first 30 s. Nothing is
asserted: the figures go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _jupyter_env import free_tcp_port, free_udp_port, isolated_env, kill_marked_processes, MARK_VAR  # noqa: E402

from astropix_nbmonitor import SimulatedSource  # noqa: E402
from astropix_nbmonitor.app import NO_OFFLINE_BUFFER  # noqa: E402

CHROMIUM = os.environ.get("ASTROPIX_CHROMIUM") or "/usr/bin/chromium"
SAMPLE_S = 5.0
SKIP_S = 30.0
NIGHT_MIN = 12 * 60

CASES = (
    # label, server option, kernel-side pause
    ("before: buffer on, no pause", False, False),
    ("server option only", True, False),
    ("kernel pause only", False, True),
    ("both (demo/serve now)", True, True),
)


def notebook(port: int, pause: bool) -> dict:
    cells = [
        "from astropix_nbmonitor import AstroPix4SimpleMonitor\n"
        f"mon = AstroPix4SimpleMonitor(group='127.0.0.1', port={port})\n"
        "mon.start(refresh_interval=0.5)\n"
        + ("" if pause else "mon.views.timeout = float('inf')  # the kernel-side pause off\n")
        + "mon",
    ]
    return {
        "cells": [
            {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": src}
            for i, src in enumerate(cells)
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


class IopubCounter:
    """A second client of the kernel: counts the comm messages it publishes, and their bytes."""

    def __init__(self, connection_file: Path) -> None:
        from jupyter_client import BlockingKernelClient

        self.client = BlockingKernelClient(connection_file=str(connection_file))
        self.client.load_connection_file()
        self.client.start_channels(shell=False, iopub=True, stdin=False, hb=False, control=False)
        self.events: list[tuple[float, int]] = []  # (time, bytes) of each comm message
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.client.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                continue
            except Exception:  # noqa: BLE001 - the kernel went away at the end
                return
            if msg.get("msg_type") == "comm_msg":
                size = len(json.dumps(msg.get("content", {}), default=str)) + sum(len(b) for b in msg.get("buffers", []))
                self.events.append((time.monotonic(), size))

    def since(self, t0: float) -> tuple[int, int]:
        picked = [size for t, size in list(self.events) if t >= t0]
        return len(picked), sum(picked)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.client.stop_channels()


def open_and_run(browser, url: str) -> None:
    """Open the notebook, Run All, wait for the live monitor, close the page."""
    context = browser.new_context(viewport={"width": 1600, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(120_000)
    try:
        page.goto(url)
        page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
        for _ in range(3):
            page.locator(".jp-Notebook .jp-Cell").first.click()
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            try:
                page.wait_for_selector('.apx-liveness[data-live="ok"]', timeout=60_000)
                break
            except Exception:  # noqa: BLE001 - Run All ran nothing (kernel not ready): again
                continue
        page.wait_for_selector('.apx-liveness[data-live="ok"]')
        time.sleep(10.0)  # ten seconds of a live page
    finally:
        context.close()


def run_case(browser, label: str, option: bool, pause: bool, minutes: float, rate: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-night-") as tmp:
        root = Path(tmp)
        env = isolated_env(root / "state")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        nbdir = root / "nb"
        nbdir.mkdir()
        udp = free_udp_port()
        (nbdir / "night.ipynb").write_text(json.dumps(notebook(udp, pause)))
        http, token = free_tcp_port(), secrets.token_hex(16)
        cmd = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={http}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nbdir}",
        ]  # fmt: skip
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        if option:
            cmd.append(NO_OFFLINE_BUFFER)
        log = (root / "server.log").open("wb")
        server = subprocess.Popen(cmd, env=env, cwd=nbdir, stdout=log, stderr=log, stdin=subprocess.DEVNULL)  # noqa: S603
        src = SimulatedSource(group="127.0.0.1", port=udp, rate_hz=rate, seed=3).start()
        counter = None
        try:
            wait_port(http, server)
            open_and_run(browser, f"http://127.0.0.1:{http}/lab/tree/night.ipynb?token={token}")
            closed = time.monotonic()
            runtime = Path(env["JUPYTER_RUNTIME_DIR"])
            files = sorted(runtime.rglob("kernel-*.json"))
            counter = IopubCounter(files[-1]) if files else None
            samples = [(0.0, rss_mb(server.pid))]
            end = closed + minutes * 60
            while time.monotonic() < end:
                time.sleep(SAMPLE_S)
                samples.append((time.monotonic() - closed, rss_mb(server.pid)))
            t = np.array([s[0] for s in samples])
            m = np.array([s[1] for s in samples])
            keep = t >= SKIP_S
            slope = float(np.polyfit(t[keep] / 60, m[keep], 1)[0]) if keep.sum() >= 2 else float("nan")
            n_msgs, n_bytes = counter.since(closed + SKIP_S) if counter else (0, 0)
            span_min = max(1e-9, (t[-1] - SKIP_S) / 60)
            return {
                "case": label,
                "rss_close": samples[0][1],
                "rss_end": samples[-1][1],
                "mb_per_min": slope,
                "msgs_per_min": n_msgs / span_min,
                "kb_per_min": n_bytes / 1024 / span_min,
            }
        finally:
            src.stop()
            if counter is not None:
                counter.stop()
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
            kill_marked_processes(env[MARK_VAR])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="minutes with the page closed, per case (default 3)")
    parser.add_argument("--rate", type=float, default=2000.0, help="readouts/s of the simulated source (default 2000)")
    parser.add_argument(
        "--cases", default="1,2,3,4", help="which cases to run, by number in the order above (default 1,2,3,4)"
    )
    args = parser.parse_args()
    cases = [CASES[int(i) - 1] for i in args.cases.split(",")]
    from playwright.sync_api import sync_playwright

    print(f"{platform.platform()}, {os.cpu_count()} CPUs; {args.minutes:g} min per case with the page closed, {args.rate:g} readouts/s")
    rows = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            for label, option, pause in cases:
                row = run_case(browser, label, option, pause, args.minutes, args.rate)
                rows.append(row)
                print(
                    f"  {row['case']:<28} server RSS {row['rss_close']:7.1f} -> {row['rss_end']:7.1f} MB, "
                    f"{row['mb_per_min']:+.3f} MB/min ({row['mb_per_min'] * NIGHT_MIN:+.0f} MB per 12 h); "
                    f"kernel {row['msgs_per_min']:.0f} comm msgs/min, {row['kb_per_min']:.1f} kB/min",
                    flush=True,
                )
        finally:
            browser.close()
    print()
    print("| case | server RSS at close | after | growth | over 12 h | kernel comm messages | kernel kB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['case']} | {row['rss_close']:.1f} MB | {row['rss_end']:.1f} MB | {row['mb_per_min']:+.3f} MB/min "
            f"| {row['mb_per_min'] * NIGHT_MIN:+.0f} MB | {row['msgs_per_min']:.0f}/min | {row['kb_per_min']:.1f}/min |"
        )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
