"""The browser side of the monitor, measured: a live monitor in JupyterLab, seen by chromium.

Run: ``python benchmarks/bench_browser.py [--minutes 2] [--refresh 0.5] [--chips 1,4,16] [--rate 2000]``.

For each number of chips, this starts ``astropix-nbmonitor demo`` (JupyterLab,
its own HOME and Jupyter folders in a temporary directory), writes a notebook
that makes an ``AstroPix4SimpleMonitor`` on a free UDP port (with
``layout=`` rows of chip ids for more than one chip), opens it in Debian's
chromium through playwright and runs it. This process sends the simulated
stream (``AstroPix4Simulator``, ``--rate`` readouts/s, a narrow beam spot, so
that the matrix's edge pixels never fire) with consecutive readout ids.
Then, over ``--minutes``, every ``--sample`` seconds it prints:

* the renderer's main-thread time per refresh: the difference of Chrome's
  ``TaskDuration`` (CDP ``Performance.getMetrics``: every task of the main
  thread, promise callbacks included, where JupyterLab, ipywidgets and bqplot
  run), divided by the refreshes in the interval; and, for reference, the
  script, layout and style parts (``ScriptDuration``, ``LayoutDuration``,
  ``RecalcStyleDuration``);
* the bytes on the kernel's websocket per refresh (playwright's
  ``framereceived`` / ``framesent``, payload sizes);
* the DOM: the monitor's element count (its output area) and the page's
  ``Nodes`` after a garbage collection (``HeapProfiler.collectGarbage``), and
  the JS heap used after it (``JSHeapUsedSize``); the main-thread time of
  these collections (asked for by the benchmark, not done by the page) is
  left out of the main-thread time and of the renderer's CPU;
* the CPU of chromium's renderer process and of the kernel process, in % of
  one core (``/proc/PID/stat``, user + system); the kernel's resident memory.

Then the latency: readouts with one hit on an edge pixel never hit before
are slipped into the stream at a random phase of the refresh; the page
watches that pixel's colour at every animation frame (the SVG rect's fill
of a ``GridHeatMap``, or ``getImageData`` of the canvas under the cell for a
canvas-drawn ``HeatMap``), with the hit map in log colours (one hit is then
a visible colour on any scale). The time runs from the send to the first
frame showing the new colour (chromium and this process share the clock).
p50, p99, max.

At the end: growth of the node count, the heap and the kernel's memory over
the measured span (first sample to last), in %, and the figures against the
targets of issue 14. Nothing is asserted: the figures go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import PacedSender, cpu_seconds, rss_mb  # noqa: E402 - the benchmarks' shared pieces

from _jupyter_env import (  # noqa: E402 - the tests' helpers for Jupyter servers
    MARK_VAR,
    LaunchedCommand,
    cli_command,
    free_tcp_port,
    free_udp_port,
    isolated_env,
    kill_marked_processes,
    marked_processes,
    run_all_cells,
)

from astropix_nbmonitor.sim import AstroPix4Simulator  # noqa: E402

CHROMIUM = os.environ.get("ASTROPIX_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
NUM_ROWS, NUM_COLS = 35, 16
#: The stream's beam spot: narrow enough that the edge pixels (the markers) never fire.
BEAM_CENTER, BEAM_SIGMA = (16.0, 8.0), (2.5, 1.2)
#: Targets of issue 14 (one chip; 16 chips).
TARGETS = {"renderer_cpu": (4.0, 10.0), "main_ms": (8.0, 40.0), "bytes": 5000.0, "latency_extra_ms": 150.0, "growth": 5.0}


def layout_for(chips: int) -> list[list[int]]:
    """Rows of chip ids: 1 chip [[0]], 4 chips 2 x 2, 16 chips 4 x 4 (any n: rows of up to 4)."""
    if chips == 1:
        return [[0]]
    width = 2 if chips == 4 else 4
    ids = list(range(chips))
    return [ids[i : i + width] for i in range(0, chips, width)]


#: Rows a hit can carry (the row field has 5 bits: rows 32 to 34 of the matrix are never hit).
ENCODABLE_ROWS = 32


def edge_pixels() -> list[tuple[int, int]]:
    """(column, row) of the matrix's edge pixels that a hit can reach, the latency markers, in a shuffled order."""
    last = ENCODABLE_ROWS - 1
    pixels = [(0, r) for r in range(ENCODABLE_ROWS)] + [(NUM_COLS - 1, r) for r in range(ENCODABLE_ROWS)]
    pixels += [(c, 0) for c in range(1, NUM_COLS - 1)] + [(c, last) for c in range(1, NUM_COLS - 1)]
    random.Random(7).shuffle(pixels)
    return pixels


# --------------------------------------------------------------------------
# The stream, with markers slipped in (ids consecutive).


class Sender(PacedSender):
    """A paced simulated stream; :meth:`mark` slips in one readout with one hit on a given pixel."""

    def __init__(self, port: int, rate: float, chips: list[int]) -> None:
        stream = AstroPix4Simulator(
            seed=1, hits_per_readout=1.0, beam_center=BEAM_CENTER, beam_sigma=BEAM_SIGMA, beam_fraction=1.0, chip_ids=chips
        )
        super().__init__(port, rate, stream, chunk=2000, clock=time.time, name="bench-browser-sender")

    @staticmethod
    def marker_record(column: int, row: int, chip: int) -> bytes:
        """A record of one readout whose one hit is on (column, row) of ``chip``."""
        sim = AstroPix4Simulator(seed=column * 100 + row, hits_per_readout=1.0, fixed_hits=True, chip_ids=(chip,),
                                 beam_center=(float(row), float(column)), beam_sigma=(1e-3, 1e-3), beam_fraction=1.0)
        return sim.generate(1).records[0]

    def mark(self, record: bytes) -> float:
        """Send ``record`` (renumbered) with the next burst; return its send time (``time.time()``; NaN after 5 s unsent)."""
        try:
            return super().mark(record, timeout=5.0)
        except queue.Empty:
            return float("nan")


# --------------------------------------------------------------------------
# /proc (cpu_seconds, rss_mb: _bench_common)


def renderer_pids(mark: str) -> list[int]:
    """Chromium renderer processes of the browser carrying the ``mark`` environment variable.

    Only the browser process keeps the environment (its zygotes clear it), so
    the renderers are found as its descendants whose command line says
    ``--type=renderer``.
    """
    parents: dict[int, int] = {}
    cmdlines: dict[int, bytes] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmdlines[int(entry.name)] = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    roots = {pid for pid in marked_processes(mark) if b"--type=" not in cmdlines.get(pid, b"")}
    out = []
    for pid, cmdline in cmdlines.items():
        if b"--type=renderer" not in cmdline:
            continue
        ancestor = parents.get(pid)
        while ancestor and ancestor not in roots:
            ancestor = parents.get(ancestor)
        if ancestor:
            out.append(pid)
    return out


def machine_load() -> str:
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return f"load average {' '.join(load)} on {os.cpu_count()} CPUs"


# --------------------------------------------------------------------------
# The notebook and JupyterLab.

NOTEBOOK_CELL = """\
import os, json
from astropix_nbmonitor import AstroPix4SimpleMonitor
# --freeze: these parts are drawn once and never updated (what the others cost, side by side)
from astropix_nbmonitor.monitor import AbstractMonitor, HitMapPanel, RatePanel, TotPanel
for part in {freeze!r}:
    if part == "dashboard":
        AbstractMonitor._render_dashboard = lambda self, status=None: None
    elif part == "heartbeat":
        pass  # below, once the monitor exists
    elif part == "titles":  # the plots' titles stay as first drawn (a bqplot title change lays its figure out again)
        from astropix_nbmonitor.monitor.panels import Panel
        Panel.set_title = lambda self, title: False
    elif part == "liveness":  # no beats after the first: the page says, once, that updates stopped
        from astropix_nbmonitor.monitor.liveness import Liveness
        Liveness.pulse = lambda self, running, now=None: None
    else:
        {{"hitmap": HitMapPanel, "tot": TotPanel, "rates": RatePanel}}[part].update = lambda self, state: None
if {prelude!r}:  # --prelude: the file's code first (what-if measurements)
    exec(compile(open({prelude!r}).read(), {prelude!r}, "exec"))
LAYOUT = {layout!r}
info = {{"pid": os.getpid(), "layout": True}}
kwargs = {{}}
if LAYOUT != [[0]]:
    kwargs["layout"] = LAYOUT
try:
    mon = AstroPix4SimpleMonitor(group="127.0.0.1", port={port}, **kwargs)
except Exception as exc:  # a monitor without the layout option yet (VBox takes layout= for its CSS Layout)
    info["layout"] = False
    info["why"] = str(exc)
    mon = AstroPix4SimpleMonitor(group="127.0.0.1", port={port})
if "heartbeat" in {freeze!r}:  # the page's heartbeats too: one at the start, then none (never paused)
    mon.liveness.heartbeat = 3600.0
    mon.views.timeout = 1e9
with open("kernel.json", "w") as f:
    json.dump(info, f)
mon.start(refresh_interval={refresh})
mon
"""


def write_notebook(path: Path, code: str) -> None:
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "bench", "metadata": {}, "outputs": [], "source": code}],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb), encoding="utf-8")


def wait_until(what: str, predicate, timeout: float = 90.0, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


# --------------------------------------------------------------------------
# In the page.

#: The monitor's element count (the output area holding its toolbar).
JS_WIDGET_NODES = """() => {
    const bar = document.querySelector('.apx-toolbar');
    if (!bar) return -1;
    const root = bar.closest('.jp-OutputArea-output') || bar.parentElement.parentElement;
    return root.querySelectorAll('*').length;
}"""

#: The monitor's elements by tag and class, with the figure they are in (what grows, with --dom-census).
JS_CENSUS = """() => {
    const bar = document.querySelector('.apx-toolbar');
    const root = bar.closest('.jp-OutputArea-output') || bar.parentElement.parentElement;
    const out = {};
    for (const e of root.querySelectorAll('*')) {
        const fig = e.closest('.apx-hitmap, .apx-tot, .apx-rates, .apx-pixel, .apx-pixel-rate, .apx-dashboard, .apx-toolbar');
        const where = fig ? Array.from(fig.classList).find(c => c.startsWith('apx-')) : 'other';
        const cls = (e.getAttribute('class') || '').split(/\\s+/).filter(Boolean).slice(0, 2).join('.');
        const key = where + ' ' + e.tagName.toLowerCase() + (cls ? '.' + cls : '') + (e.childElementCount ? '' : ' (leaf)');
        out[key] = (out[key] || 0) + 1;
    }
    return out;
}"""

#: Install a watcher of one hit-map cell: records Date.now() at the first animation frame showing another colour.
JS_WATCH = """([column, row, ncols, nrows]) => {
    const fig = document.querySelector('.apx-hitmap');
    const w = {changedAt: null, kind: null, error: null};
    let read = null;
    const rects = fig.querySelectorAll('rect.heatmapcell');
    const image = fig.querySelector('image.heatmap');
    const matrix = fig.querySelector('canvas.apx-matrix-canvas');
    if (matrix) {
        // The monitor's colour canvas (one canvas pixel a cell, row 0 on top), under a
        // transparent GridHeatMap that catches clicks: the cell's pixel, read at every frame.
        w.kind = 'matrix';
        const ctx = matrix.getContext('2d');
        read = () => Array.from(ctx.getImageData(column, row, 1, 1).data).join(',');
    } else if (image) {
        // A canvas-drawn HeatMap shown as an SVG image (under a transparent, never-updated
        // GridHeatMap that catches clicks): the pixel is read from the image the page shows,
        // decoded again whenever its href changes; row 0 is at the top (a reversed row scale).
        w.kind = 'image';
        const W = Math.round(+image.getAttribute('width')), H = Math.round(+image.getAttribute('height'));
        const canvas = document.createElement('canvas');
        canvas.width = W; canvas.height = H;
        const ctx = canvas.getContext('2d');
        const px = Math.floor((column + 0.5) * W / ncols), py = Math.floor((row + 0.5) * H / nrows);
        const decode = (href) => {
            const img = new Image();
            img.src = href;
            return img.decode().then(() => {
                ctx.clearRect(0, 0, W, H);
                ctx.drawImage(img, 0, 0, W, H);
                return Array.from(ctx.getImageData(px, py, 1, 1).data).join(',');
            });
        };
        let lastHref = image.getAttribute('href');
        decode(lastHref).then((initial) => {
            w.initial = initial;
            const check = () => {
                if (window.__apxWatch !== w) return;
                const current = fig.querySelector('image.heatmap');
                const href = current && current.getAttribute('href');
                if (href && href !== lastHref) {
                    lastHref = href;
                    const seen = Date.now();  // when the page put the new picture up
                    decode(href).then((now) => {
                        if (w.changedAt === null && now !== w.initial) { w.changedAt = seen; w.now = now; }
                    });
                }
                if (w.changedAt === null) requestAnimationFrame(check);
            };
            requestAnimationFrame(check);
        });
        window.__apxWatch = w;
        return {kind: w.kind, initial: null};
    }
    if (w.kind === 'matrix') {
        // read is set
    } else if (rects.length >= ncols * nrows) {
        w.kind = 'svg';
        let cell = null;
        for (const r of rects) {
            const d = r.__data__;
            if (d && d.row_num === row && d.column_num === column) { cell = r; break; }
        }
        if (!cell) cell = rects[row * ncols + column];
        read = () => cell.getAttribute('fill') || getComputedStyle(cell).fill;
    } else {
        const canvas = fig.querySelector('canvas');
        const area = fig.querySelector('rect.plotarea_background') || fig.querySelector('.plotarea_events');
        if (!canvas || !area) { w.error = 'no heatmap cells and no canvas'; window.__apxWatch = w; return w; }
        w.kind = 'canvas';
        const a = area.getBoundingClientRect(), c = canvas.getBoundingClientRect();
        const x = a.left + (column + 0.5) * a.width / ncols, y = a.top + (row + 0.5) * a.height / nrows;
        const px = Math.floor((x - c.left) * canvas.width / c.width), py = Math.floor((y - c.top) * canvas.height / c.height);
        const ctx = canvas.getContext('2d');
        read = () => Array.from(ctx.getImageData(px, py, 1, 1).data).join(',');
    }
    const initial = read();
    w.initial = initial;
    const check = () => {
        if (window.__apxWatch !== w) return;
        const now = read();
        if (now !== initial) { w.changedAt = Date.now(); w.now = now; return; }
        requestAnimationFrame(check);
    };
    window.__apxWatch = w;
    requestAnimationFrame(check);
    return {kind: w.kind, initial};
}"""


class Probe:
    """CDP metrics, websocket bytes and process CPU of one page."""

    def __init__(self, page, mark: str, kernel_pid: int) -> None:
        self.page = page
        self.cdp = page.context.new_cdp_session(page)
        self.cdp.send("Performance.enable", {"timeDomain": "threadTicks"})
        self.kernel_pid = kernel_pid
        self.mark = mark
        self.ws_in = self.ws_out = self.frames = 0
        self.gc_seconds = 0.0  # main-thread time of the collections this probe asked for
        self._ws_lock = threading.Lock()
        page.on("websocket", self._on_websocket)

    def _on_websocket(self, ws) -> None:
        if "/api/kernels/" not in ws.url:
            return
        ws.on("framereceived", lambda payload: self._count(payload, True))
        ws.on("framesent", lambda payload: self._count(payload, False))

    def _count(self, payload, received: bool) -> None:
        n = len(payload.encode() if isinstance(payload, str) else payload)
        with self._ws_lock:
            self.frames += 1
            if received:
                self.ws_in += n
            else:
                self.ws_out += n

    def metrics(self, gc: bool = False) -> dict[str, float]:
        if gc:
            self.cdp.send("HeapProfiler.collectGarbage")
        got = self.cdp.send("Performance.getMetrics")["metrics"]
        return {m["name"]: m["value"] for m in got}

    def renderer_cpu(self) -> float:
        """CPU seconds of the renderer processes of this run's chromium (one page: one busy renderer)."""
        total = 0.0
        for pid in renderer_pids(self.mark):
            try:
                total += cpu_seconds(pid)
            except OSError:
                continue
        return total

    def snapshot(self, gc: bool) -> dict[str, float]:
        """The counters now; with ``gc``, the heap and nodes after a garbage collection.

        The collection this probe asks for is main-thread work of the probe,
        not of the page: its TaskDuration is measured and left out of ``task``
        (and of the renderer's CPU).
        """
        if gc:
            before = self.metrics()["TaskDuration"]
            m = self.metrics(gc=True)
            self.gc_seconds += m["TaskDuration"] - before
        else:
            m = self.metrics()
        with self._ws_lock:
            ws_in, ws_out, frames = self.ws_in, self.ws_out, self.frames
        return {
            "t": time.monotonic(),
            "task": m.get("TaskDuration", 0.0) - self.gc_seconds,
            "script": m.get("ScriptDuration", 0.0),
            "layout": m.get("LayoutDuration", 0.0),
            "style": m.get("RecalcStyleDuration", 0.0),
            "heap_mb": m.get("JSHeapUsedSize", 0.0) / 2**20,
            "nodes": m.get("Nodes", 0.0),
            "widget_nodes": float(self.page.evaluate(JS_WIDGET_NODES)),
            "ws_in": ws_in,
            "ws_out": ws_out,
            "frames": frames,
            "renderer_cpu": self.renderer_cpu() - self.gc_seconds,
            "kernel_cpu": cpu_seconds(self.kernel_pid),
            "kernel_rss": rss_mb(self.kernel_pid),
        }


def js_profile(probe: Probe, seconds: float, top: int = 25) -> list[tuple[float, str]]:
    """Sample the page's JavaScript for ``seconds`` (CDP Profiler); the ``top`` functions by self time (ms per second)."""
    cdp = probe.cdp
    cdp.send("Profiler.enable")
    cdp.send("Profiler.setSamplingInterval", {"interval": 200})
    cdp.send("Profiler.start")
    time.sleep(seconds)
    profile = cdp.send("Profiler.stop")["profile"]
    cdp.send("Profiler.disable")
    nodes = {n["id"]: n for n in profile["nodes"]}
    self_us: dict[int, float] = {}
    for node_id, delta in zip(profile.get("samples", []), profile.get("timeDeltas", [])):
        self_us[node_id] = self_us.get(node_id, 0.0) + delta
    by_name: dict[str, float] = {}
    for node_id, us in self_us.items():
        frame = nodes[node_id]["callFrame"]
        url = frame.get("url", "").rsplit("/", 1)[-1][:40]
        name = f"{frame.get('functionName') or '(anonymous)'} {url}:{frame.get('lineNumber', 0)}"
        by_name[name] = by_name.get(name, 0.0) + us
    ranked = sorted(((us / 1e3 / seconds, name) for name, us in by_name.items()), reverse=True)
    return ranked[:top]


def main_thread_trace(probe: Probe, seconds: float, top: int = 20) -> list[tuple[float, str]]:
    """Record a Chrome trace of the page for ``seconds``; the renderer main thread's ``top`` event kinds by self time.

    Self time of an event: its duration minus that of the events nested in
    it on the same thread (e.g. ``Paint``, ``Layout``, ``UpdateLayoutTree``,
    ``FunctionCall``): ms per second of wall time. Where the main-thread time
    that is not script goes.
    """
    cdp = probe.cdp
    chunks: list[dict] = []
    done = threading.Event()
    cdp.on("Tracing.dataCollected", lambda event: chunks.extend(event.get("value", [])))
    cdp.on("Tracing.tracingComplete", lambda _event: done.set())
    cdp.send("Tracing.start", {"traceConfig": {"includedCategories": ["devtools.timeline", "disabled-by-default-devtools.timeline", "blink", "v8"]}})
    time.sleep(seconds)
    cdp.send("Tracing.end")
    deadline = time.monotonic() + 30
    while not done.is_set() and time.monotonic() < deadline:
        probe.page.wait_for_timeout(100)  # the session's events are delivered while playwright waits
    main = {(e.get("pid"), e.get("tid")) for e in chunks if e.get("name") == "thread_name" and e.get("args", {}).get("name") == "CrRendererMain"}
    by_thread: dict[tuple, list[tuple[float, float, str]]] = {}
    for e in chunks:
        if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in main and "dur" in e:
            by_thread.setdefault((e["pid"], e["tid"]), []).append((float(e["ts"]), float(e["dur"]), e["name"]))
    return _trace_self_times(by_thread, seconds, top)


def _trace_self_times(by_thread: dict, seconds: float, top: int) -> list[tuple[float, str]]:
    """Self time per event name (ms per second of wall time) of nested complete events, with how many a second."""
    self_us: dict[str, float] = {}
    count: dict[str, int] = {}
    for events in by_thread.values():
        for _ts, _dur, name in events:
            count[name] = count.get(name, 0) + 1
        events.sort(key=lambda x: (x[0], -x[1]))
        stack: list[list] = []  # [end, name, duration, time of the children]
        def close(entry: list) -> None:
            self_us[entry[1]] = self_us.get(entry[1], 0.0) + max(entry[2] - entry[3], 0.0)
        for ts, dur, name in events:
            while stack and stack[-1][0] <= ts:
                close(stack.pop())
            if stack:
                stack[-1][3] += min(dur, stack[-1][0] - ts)
            stack.append([ts + dur, name, dur, 0.0])
        while stack:
            close(stack.pop())
    ranked = sorted(((us / 1e3 / seconds, f"{name} ({count[name] / seconds:.1f}/s)") for name, us in self_us.items()), reverse=True)
    return ranked[:top]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def growth(first: float, last: float) -> float:
    return 100.0 * (last - first) / first if first else float("nan")


# --------------------------------------------------------------------------
# One run.


def run_one(browser_type, args: argparse.Namespace, chips: int) -> dict[str, object]:
    layout = layout_for(chips)
    chip_ids = [c for row in layout for c in row]
    root = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    env = isolated_env(root / "state")
    mark = env[MARK_VAR]
    udp_port = free_udp_port()
    workdir = root / "nb"
    workdir.mkdir()
    write_notebook(workdir / "bench.ipynb", NOTEBOOK_CELL.format(layout=layout, port=udp_port, refresh=args.refresh, freeze=args.freeze,
                                                                    prelude=str(Path(args.prelude).resolve()) if args.prelude else ""))
    cmd = LaunchedCommand(
        cli_command("demo", "--http-port", str(free_tcp_port()), "--dir", str(workdir)), env=env, cwd=root, log=root / "lab.log"
    )
    sender = None
    browser = None
    result: dict[str, object] = {"chips": chips}
    try:
        url = cmd.wait_for_url().replace("quickstart.ipynb", "bench.ipynb")
        browser = browser_type.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"], env={**os.environ, MARK_VAR: mark}
        )
        context = browser.new_context(viewport={"width": 1600, "height": 1100})
        page = context.new_page()
        page.set_default_timeout(60_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        probe = Probe(page, mark, kernel_pid=0)
        page.goto(url)
        run_all_cells(page, quiet=True)
        info = wait_until("the kernel's info file", lambda: (workdir / "kernel.json").is_file() and json.loads((workdir / "kernel.json").read_text()))
        probe.kernel_pid = int(info["pid"])
        result["layout_used"] = bool(info["layout"]) if chips > 1 else None
        if not info["layout"] and chips > 1:
            print(f"  the monitor does not accept layout= yet ({info.get('why')}): one summed map of {chips} chips")
        wait_until("the hit map", lambda: page.locator(".apx-hitmap").count() > 0, timeout=120)
        sender = Sender(udp_port, args.rate, chip_ids)
        sender.start()
        page.locator(".apx-toolbar").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.mouse.move(1, 1)
        time.sleep(args.warmup)
        if args.screenshot:
            page.screenshot(path=args.screenshot)
        # --- the measured span
        print(f"  {'time':>6} {'main ms':>8} {'script':>7} {'layout':>7} {'style':>6} {'kB/ref':>7} {'frames':>6}"
              f" {'nodes':>7} {'widget':>7} {'heap MB':>8} {'render%':>8} {'kernel%':>8} {'k RSS':>7}")
        census = page.evaluate(JS_CENSUS) if args.dom_census else {}
        samples = [probe.snapshot(gc=True)]
        end = time.monotonic() + 60 * args.minutes
        rows = []
        while time.monotonic() < end:
            time.sleep(min(args.sample, max(0.0, end - time.monotonic())))
            s = probe.snapshot(gc=True)
            p = samples[-1]
            dt = s["t"] - p["t"]
            refreshes = dt / args.refresh
            row = {
                "t": s["t"] - samples[0]["t"],
                "main_ms": 1e3 * (s["task"] - p["task"]) / refreshes,
                "script_ms": 1e3 * (s["script"] - p["script"]) / refreshes,
                "layout_ms": 1e3 * (s["layout"] - p["layout"]) / refreshes,
                "style_ms": 1e3 * (s["style"] - p["style"]) / refreshes,
                "bytes": (s["ws_in"] + s["ws_out"] - p["ws_in"] - p["ws_out"]) / refreshes,
                "bytes_in": (s["ws_in"] - p["ws_in"]) / refreshes,
                "frames": (s["frames"] - p["frames"]) / refreshes,
                "renderer_pct": 100 * (s["renderer_cpu"] - p["renderer_cpu"]) / dt,
                "kernel_pct": 100 * (s["kernel_cpu"] - p["kernel_cpu"]) / dt,
                **{k: s[k] for k in ("nodes", "widget_nodes", "heap_mb", "kernel_rss")},
            }
            rows.append(row)
            samples.append(s)
            print(f"  {row['t']:6.0f} {row['main_ms']:8.2f} {row['script_ms']:7.2f} {row['layout_ms']:7.2f} {row['style_ms']:6.2f}"
                  f" {row['bytes'] / 1e3:7.2f} {row['frames']:6.1f} {row['nodes']:7.0f} {row['widget_nodes']:7.0f}"
                  f" {row['heap_mb']:8.2f} {row['renderer_pct']:8.1f} {row['kernel_pct']:8.1f} {row['kernel_rss']:7.1f}", flush=True)
        if args.dom_census:
            after = page.evaluate(JS_CENSUS)
            grew = {k: (census.get(k, 0), v) for k, v in after.items() if v != census.get(k, 0)}
            grew.update({k: (v, 0) for k, v in census.items() if k not in after})
            print("  elements that changed in number over the span (before -> after):")
            for k, (a, b) in sorted(grew.items(), key=lambda kv: -abs(kv[1][1] - kv[1][0])):
                print(f"    {k}: {a} -> {b}")
        first, last = samples[0], samples[-1]
        span = last["t"] - first["t"]
        refreshes = span / args.refresh
        result.update(
            main_ms=1e3 * (last["task"] - first["task"]) / refreshes,
            script_ms=1e3 * (last["script"] - first["script"]) / refreshes,
            layout_ms=1e3 * (last["layout"] - first["layout"]) / refreshes,
            style_ms=1e3 * (last["style"] - first["style"]) / refreshes,
            bytes=(last["ws_in"] + last["ws_out"] - first["ws_in"] - first["ws_out"]) / refreshes,
            frames=(last["frames"] - first["frames"]) / refreshes,
            bytes_first=rows[0]["bytes"] if rows else float("nan"),
            bytes_last=rows[-1]["bytes"] if rows else float("nan"),
            renderer_pct=100 * (last["renderer_cpu"] - first["renderer_cpu"]) / span,
            kernel_pct=100 * (last["kernel_cpu"] - first["kernel_cpu"]) / span,
            nodes=(first["nodes"], last["nodes"]),
            widget_nodes=(first["widget_nodes"], last["widget_nodes"]),
            heap_mb=(first["heap_mb"], last["heap_mb"]),
            kernel_rss=(first["kernel_rss"], last["kernel_rss"]),
            span_s=span,
        )
        if args.trace:
            print(f"  Renderer main thread over {args.trace:g} s, self time by trace event (ms per second of wall time):")
            for ms, name in main_thread_trace(probe, args.trace):
                print(f"    {ms:7.2f}  {name}")
        if args.profile:
            print(f"  JavaScript self time over {args.profile:g} s (ms per second of wall time):")
            for ms, name in js_profile(probe, args.profile):
                print(f"    {ms:7.2f}  {name}")
        # --- the latency
        if args.markers:
            page.locator(".apx-scale button:text-is('log')").first.click()
            time.sleep(3 * args.refresh + 1)
            lat, kinds = [], set()
            for column, row in edge_pixels()[: args.markers]:
                time.sleep(random.uniform(0.2, 0.2 + args.refresh))
                watch = page.evaluate(JS_WATCH, [column, row, NUM_COLS, NUM_ROWS])
                if watch.get("error"):
                    print(f"  latency: {watch['error']}")
                    break
                kinds.add(watch["kind"])
                sent = sender.mark(Sender.marker_record(column, row, chip_ids[0]))
                deadline = time.monotonic() + 10 * args.refresh + 5
                changed = None
                while time.monotonic() < deadline and changed is None:
                    time.sleep(0.02)
                    changed = page.evaluate("() => window.__apxWatch && window.__apxWatch.changedAt")
                if changed is None:
                    print(f"  latency: pixel (column {column}, row {row}) did not change colour")
                    continue
                lat.append(changed - 1e3 * sent)
            result.update(latency=(statistics.median(lat), _pct(lat, 99), max(lat)) if lat else None, latency_n=len(lat),
                          latency_mark=",".join(sorted(kinds)))
        result["errors"] = errors
    finally:
        if sender is not None:
            sender.stop_event.set()
            sender.join(5)
        if browser is not None:
            browser.close()
        if cmd.proc.poll() is None:
            cmd.stop(signal.SIGTERM)
        kill_marked_processes(mark)
        shutil.rmtree(root, ignore_errors=True)
    return result


def report(results: list[dict[str, object]], args: argparse.Namespace) -> None:
    frozen = f", frozen: {', '.join(args.freeze)}" if args.freeze else ""
    print(f"\nSummary{frozen} ({args.minutes:g} min per run, refresh {args.refresh:g} s, {args.rate:,.0f} readouts/s; {machine_load()})")
    print(f"{'chips':>5} {'layout':>6} {'main ms':>8} {'script+layout+style':>20} {'B/refresh':>10} {'first->last':>14}"
          f" {'render%':>8} {'kernel%':>8} {'nodes':>14} {'heap MB':>14} {'kernel MB':>14} {'latency p50/p99/max ms':>24}")
    for r in results:
        n0, n1 = r["nodes"]
        h0, h1 = r["heap_mb"]
        k0, k1 = r["kernel_rss"]
        w0, w1 = r["widget_nodes"]
        lat = r.get("latency")
        lat_text = "-" if not lat else f"{lat[0]:.0f}/{lat[1]:.0f}/{lat[2]:.0f} ({r['latency_n']}, {r['latency_mark']})"
        print(f"{r['chips']:>5} {'-' if r['layout_used'] is None else 'yes' if r['layout_used'] else 'no':>6} {r['main_ms']:8.2f}"
              f" {r['script_ms']:6.2f}+{r['layout_ms']:5.2f}+{r['style_ms']:5.2f}"
              f" {r['bytes']:10,.0f} {r['bytes_first']:6,.0f}->{r['bytes_last']:<6,.0f}"
              f" {r['renderer_pct']:8.1f} {r['kernel_pct']:8.1f}"
              f" {n0:6.0f}->{n1:<6.0f} {h0:6.1f}->{h1:<6.1f} {k0:6.1f}->{k1:<6.1f} {lat_text:>24}")
        print(f"      websocket frames per refresh {r['frames']:.1f} ({r['bytes'] / max(r['frames'], 1e-9):,.0f} B each on average)")
        print(f"      growth over {r['span_s'] / 60:.1f} min: page nodes {growth(n0, n1):+.1f}%, monitor's elements"
              f" {w0:.0f}->{w1:.0f} ({growth(w0, w1):+.1f}%), JS heap {growth(h0, h1):+.1f}%, kernel RSS {growth(k0, k1):+.1f}%")
        i = 1 if r["chips"] >= 16 else 0
        checks = [
            ("renderer CPU", r["renderer_pct"], TARGETS["renderer_cpu"][i], "% of a core"),
            ("main thread per refresh", r["main_ms"], TARGETS["main_ms"][i], "ms"),
        ]
        if r["chips"] == 1:
            checks.append(("bytes per refresh", r["bytes"], TARGETS["bytes"], "B"))
        if lat:
            checks.append(("latency p99", lat[1], 1e3 * args.refresh + TARGETS["latency_extra_ms"], "ms"))
        for name, value, target, unit in checks:
            verdict = "met" if value <= target else f"NOT met (x{value / target:.2f})"
            print(f"      {name}: {value:,.2f} {unit} (target <= {target:g}): {verdict}")
        if r["errors"]:
            print(f"      page errors: {r['errors'][:3]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="measured span per run (default 2; 60 for the hour-long check)")
    parser.add_argument("--refresh", type=float, default=0.5, help="the monitor's refresh interval (default 0.5 s)")
    parser.add_argument("--chips", default="1", help="comma-separated chip counts, one run each (default 1; e.g. 1,4,16)")
    parser.add_argument("--rate", type=float, default=2000.0, help="readouts/s sent (default 2000)")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds of data before measuring (default 15)")
    parser.add_argument("--markers", type=int, default=60, help="latency markers (at most 98 edge pixels; 0: none)")
    parser.add_argument("--freeze", default="",
                        help="comma-separated parts never updated (hitmap, tot, rates, dashboard, liveness, heartbeat, titles): what the others cost; "
                        "no latency with the hit map frozen")
    parser.add_argument("--trace", type=float, default=0.0, help="after the measured span, record a Chrome trace for this many seconds and print the main thread's time by event (Paint, Layout, FunctionCall...)")
    parser.add_argument("--profile", type=float, default=0.0, help="after the measured span, sample the page's JavaScript for this many seconds and print the top functions")
    parser.add_argument("--prelude", default=None, help="a Python file the notebook runs before it makes the monitor (what-if measurements: a patched panel...)")
    parser.add_argument("--screenshot", default=None, help="save a picture of the page after the warm-up to this path")
    parser.add_argument("--dom-census", action="store_true", help="print which of the monitor's elements changed in number")
    args = parser.parse_args()
    args.freeze = [p.strip() for p in args.freeze.split(",") if p.strip()]
    unknown = set(args.freeze) - {"hitmap", "tot", "rates", "dashboard", "liveness", "heartbeat", "titles"}
    if unknown:
        parser.error(f"--freeze: unknown parts {sorted(unknown)}")
    args.markers = 0 if "hitmap" in args.freeze else min(args.markers, len(edge_pixels()))
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        print(f"chromium not found at {CHROMIUM} (apt-get install chromium, or set ASTROPIX_CHROMIUM)")
        return 1
    print(f"bench_browser: {machine_load()}")
    results = []
    with sync_playwright() as pw:
        for chips in [int(c) for c in args.chips.split(",") if c.strip()]:
            print(f"\n{chips} chip(s), layout {layout_for(chips)}:")
            results.append(run_one(pw.chromium, args, chips))
    report(results, args)
    print(f"\nafter: {machine_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
