"""The browser's cost of a hit map mark: GridHeatMap (SVG cells), HeatMap (canvas as a PNG) and the monitor's colour canvas.

Runs a real JupyterLab (isolated state, 127.0.0.1, a fresh token) and
Debian's chromium through playwright, as the browser tests do. A notebook
shows 1, 4 and 16 chip maps of 35 rows x 16 columns, each drawn as

* ``grid``: a ``bqplot.GridHeatMap`` (one SVG ``rect`` per pixel, what the
  monitor drew until now);
* ``heat``: a ``bqplot.HeatMap`` (the cells painted on a canvas, shown as
  one ``image``);
* ``matrix``: the monitor's ``MatrixCanvas`` (monitor/matrix.py: the colours
  on a canvas of one pixel a cell, one byte a cell sent, inside the figure
  under its transparent plot area) with the transparent ``GridHeatMap`` on
  top, as the monitor draws its maps now;
* ``heat+light``: a ``HeatMap`` under a transparent ``GridHeatMap`` whose
  data never change (the layer that catches clicks and hovers: bqplot 0.13's
  HeatMap sends no click and shows no tooltip);
* ``image``: a ``bqplot.Image`` (``pixelated``) of a 16 x 35 pixel PNG made
  in the kernel (zlib, a colour table; no colour bar, no click layer), a
  candidate for a cheaper map;
* ``monitor``: ``AstroPix4SimpleMonitor(layout=...)`` itself (its chip maps,
  and its TOT, rate and dashboard, fed with simulated data), to see the
  whole page.

and changes every map's colours (new Poisson counts, float32) at 2 Hz. For
each case it prints, per update: the renderer's main-thread time (the
difference of Chrome's ``TaskDuration`` from ``Performance.getMetrics``,
which counts the promise callbacks in which JupyterLab, ipywidgets and
bqplot run; ``ScriptDuration`` is printed beside it), the layout and style
time, the bytes the page received on the kernel's websocket, and the DOM
nodes of the page. The same time with no update, just before each case's
updates, gives the page's idle baseline ("over idle" subtracts it).

    python benchmarks/bench_marks.py [--updates 20] [--chips 1 4 16] [--kinds grid heat heat+light matrix monitor] [--kernel-only]

It first counts, in the kernel, the bytes the main hit map's widgets send per
refresh (linear, log, with masked pixels).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _jupyter_env import MARK_VAR, free_tcp_port, isolated_env, kill_marked_processes, run_new_cell  # noqa: E402

CHROMIUM = os.environ.get("ASTROPIX_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

#: The kernel's side: one cell, then ``bench(kind, chips, updates)`` per case.
KERNEL_CODE = r'''
import threading, time
import numpy as np, bqplot, ipywidgets as widgets
from IPython.display import display

status = widgets.Label("idle")
status.add_class("bench-status")
display(status)

import struct, zlib
ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=float)
LUT = np.stack([np.interp(np.linspace(0, 4, 256), np.arange(5), ANCHORS[:, k]) for k in range(3)], axis=1).astype(np.uint8)

def png_of(counts, top=30.0):
    """A 16 x 35 pixel PNG of the counts (rows top-down), coloured through a viridis-like table."""
    rgb = LUT[np.clip(counts / top * 255, 0, 255).astype(np.uint8)]
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")

class ImageMap:
    """A map drawn as a bqplot Image of a PNG made here: ``color = counts`` sends a new PNG.

    bqplot's Image view redraws when the mark's ``image`` changes, not when
    that widget's value does: two Image widgets take turns (the idle one gets
    the new PNG, then the mark is pointed at it).
    """
    def __init__(self, mark, pictures):
        self.mark, self.pictures, self.turn = mark, pictures, 0
    @property
    def color(self):
        return None
    @color.setter
    def color(self, counts):
        self.turn ^= 1
        picture = self.pictures[self.turn]
        picture.value = png_of(counts)
        self.mark.image = picture

class MatrixMap:
    """The monitor's colour canvas (one canvas pixel a cell, one byte a cell sent) under a figure: ``color = counts``."""
    def __init__(self, matrix):
        self.matrix = matrix
    @property
    def color(self):
        return self.matrix.color
    @color.setter
    def color(self, counts):
        self.matrix.show(counts, 0.0, 30.0)

def one_map(kind):
    rows, cols = np.arange(35.0), np.arange(16.0)
    color = np.zeros((35, 16), dtype=np.float32)
    cs = bqplot.ColorScale(scheme="viridis", min=0.0, max=30.0)
    if kind == "matrix":
        from astropix_nbmonitor.monitor.matrix import MatrixCanvas
        xs, ys = bqplot.LinearScale(min=-0.5, max=15.5), bqplot.LinearScale(min=34.5, max=-0.5)
        lx, ly = bqplot.OrdinalScale(), bqplot.OrdinalScale(reverse=True)
        clear = bqplot.ColorScale(min=0.0, max=1.0, colors=["rgba(0,0,0,0)", "rgba(0,0,0,0)"])
        light = bqplot.GridHeatMap(row=rows, column=cols, color=np.zeros((35, 16)), scales={"row": ly, "column": lx, "color": clear}, stroke=None, null_color="rgba(0,0,0,0)")
        fig = bqplot.Figure(marks=[light], axes=[bqplot.Axis(scale=xs), bqplot.Axis(scale=ys, orientation="vertical"), bqplot.ColorAxis(scale=cs, side="right")],
                            fig_margin={"top": 10, "bottom": 30, "left": 35, "right": 60}, layout=widgets.Layout(width="auto", height="300px", min_width="0px"))
        matrix = MatrixCanvas(35, 16)
        matrix.follow(fig)
        return fig, MatrixMap(matrix)
    if kind == "image":
        xs, ys = bqplot.LinearScale(min=-0.5, max=15.5), bqplot.LinearScale(min=34.5, max=-0.5)
        pictures = [widgets.Image(value=png_of(color), format="png") for _ in range(2)]
        mark = bqplot.Image(image=pictures[0], x=[-0.5, 15.5], y=[-0.5, 34.5], scales={"x": xs, "y": ys}, pixelated=True)
        fig = bqplot.Figure(marks=[mark], axes=[bqplot.Axis(scale=xs), bqplot.Axis(scale=ys, orientation="vertical")],
                            fig_margin={"top": 10, "bottom": 30, "left": 35, "right": 60}, layout=widgets.Layout(width="auto", height="300px", min_width="0px"))
        return fig, ImageMap(mark, pictures)
    if kind == "grid":
        xs, ys = bqplot.OrdinalScale(), bqplot.OrdinalScale(reverse=True)
        mark = bqplot.GridHeatMap(row=rows, column=cols, color=color, scales={"row": ys, "column": xs, "color": cs}, stroke="white")
        marks = [mark]
    else:
        xs, ys = bqplot.LinearScale(min=-0.5, max=15.5), bqplot.LinearScale(min=34.5, max=-0.5)
        mark = bqplot.HeatMap(x=cols, y=rows, color=color, scales={"x": xs, "y": ys, "color": cs})
        marks = [mark]
        if kind == "heat+light":
            lx, ly = bqplot.OrdinalScale(), bqplot.OrdinalScale(reverse=True)
            clear = bqplot.ColorScale(min=0.0, max=1.0, colors=["rgba(0,0,0,0)", "rgba(0,0,0,0)"])
            marks.append(bqplot.GridHeatMap(row=rows, column=cols, color=np.zeros((35, 16)), scales={"row": ly, "column": lx, "color": clear}, stroke=None, null_color="rgba(0,0,0,0)"))
    fig = bqplot.Figure(marks=marks, axes=[bqplot.Axis(scale=xs), bqplot.Axis(scale=ys, orientation="vertical"), bqplot.ColorAxis(scale=cs, side="right")],
                        fig_margin={"top": 10, "bottom": 30, "left": 35, "right": 60}, layout=widgets.Layout(width="auto", height="300px", min_width="0px"))
    return fig, mark

def run_updates(marks, updates, rate, label):
    rng = np.random.default_rng(1)
    time.sleep(4.0)  # drawn and settled
    status.value = "settled " + label  # the same time with no update: the page's own baseline
    time.sleep(updates / rate)
    status.value = "running " + label
    for _ in range(updates):
        t0 = time.monotonic()
        for mark in marks:
            mark.color = rng.poisson(15.0, (35, 16)).astype(np.float32)
        time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - t0)))
    time.sleep(1.5)
    status.value = "done " + label

def bench(kind, chips, updates, rate=2.0):
    label = f"{kind} {chips}"
    if kind == "monitor":
        return bench_monitor(chips, updates, rate, label)
    pairs = [one_map(kind) for _ in range(chips)]
    ncols = 1 if chips == 1 else 4 if chips >= 16 else 2
    from astropix_nbmonitor.monitor.matrix import stack_underlays
    box = widgets.GridBox(stack_underlays([f for f, _ in pairs]), layout=widgets.Layout(grid_template_columns=f"repeat({ncols}, minmax(0, 1fr))", width="100%"))
    box.add_class("bench-box")
    display(box)
    threading.Thread(target=run_updates, args=([m for _, m in pairs], updates, rate, label), daemon=True).start()
    return box

def bench_monitor(chips, updates, rate, label):
    from astropix_nbmonitor.monitor import AstroPix4SimpleMonitor
    from astropix_nbmonitor.sim import AstroPix4Simulator
    ids = list(range(chips))
    layout = None if chips == 1 else [ids[i:i + (2 if chips == 4 else 4)] for i in range(0, chips, 2 if chips == 4 else 4)]
    mon = AstroPix4SimpleMonitor(port=0) if layout is None else AstroPix4SimpleMonitor(port=0, layout=layout)
    mon.add_class("bench-box")
    display(mon)
    sim = AstroPix4Simulator(seed=3, chip_ids=tuple(ids), hits_per_readout=2)
    def run():
        time.sleep(5.0)
        mon.replay(sim.generate(200).records)
        time.sleep(2.0)
        status.value = "settled " + label
        time.sleep(updates / rate)
        status.value = "running " + label
        for _ in range(updates):
            t0 = time.monotonic()
            mon.replay(sim.generate(200).records)
            time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - t0)))
        time.sleep(1.5)
        status.value = "done " + label
    threading.Thread(target=run, daemon=True).start()
    return mon
'''


def notebook() -> dict:
    return {
        "cells": [{"cell_type": "code", "metadata": {}, "source": KERNEL_CODE.strip(), "outputs": [], "execution_count": None}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def run_cell(page, code: str) -> None:
    """A new cell at the end of the notebook, ``code`` typed into it and run."""
    run_new_cell(page, code)
    page.keyboard.press("Escape")  # command mode: no blinking cursor in the measured time
    page.mouse.move(1, 1)


STATUS_JS = "() => { const e = document.querySelector('.bench-status'); return e ? e.textContent : null; }"


def wait_status(page, text: str, timeout: float = 120.0) -> None:
    """Wait for ``text`` in the status label (read as textContent: the label may be scrolled out of view)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in (page.evaluate(STATUS_JS) or ""):
            return
        time.sleep(0.05)
    shown = page.evaluate(STATUS_JS)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    tail = errors.last.inner_text()[-2000:] if errors.count() else ""
    msg = f"no {text!r} in the status label after {timeout} s (it shows {shown!r}); last error output: {tail}"
    raise TimeoutError(msg)


def metrics(cdp) -> dict[str, float]:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def wait_server(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own local server
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    msg = f"JupyterLab did not answer at {url}"
    raise TimeoutError(msg)


def kernel_bytes(refreshes: int = 20) -> None:
    """Bytes the hit map's widgets send per refresh, counted in the kernel (message content and buffers).

    Counts what ``Widget._send`` is given by the main hit map's marks, scales
    and axes (one chip, no layout) while simulated data arrive between
    refreshes; the Jupyter message header (about 300-400 bytes a message on
    the websocket) comes on top, once per message.
    """
    import ipywidgets as widgets

    from astropix_nbmonitor.monitor import AstroPix4SimpleMonitor, HitMapPanel
    from astropix_nbmonitor.sim import AstroPix4Simulator

    sent: list[tuple[int, int]] = []
    watched: set[int] = set()
    original = widgets.Widget._send

    def counting(self, msg, buffers=None):
        if id(self) in watched:
            sent.append((len(json.dumps(msg, default=str)), sum(len(memoryview(b).cast("B")) for b in buffers or ())))
        return original(self, msg, buffers)

    widgets.Widget._send = counting
    try:
        print(f"kernel side, main hit map, {refreshes} refreshes, 1 chip (content + buffers; headers not counted)")
        for label, setup in (("linear", None), ("log", "log"), ("linear, 2 masked pixels", "mask")):
            mon = AstroPix4SimpleMonitor(port=0)
            panel = mon.panel(HitMapPanel)
            watched.clear()
            watched |= {id(w) for w in (panel.heatmap, panel.color_scale, panel.color_axis, panel.figure, panel.mask_layer,
                                        panel.noisy_markers, panel.selected_marker)}
            if setup == "log":
                mon.scale_toggle.value = "log"
            if setup == "mask":
                mon.mask_pixels([(0, 3, 4), (0, 7, 20)])
            sim = AstroPix4Simulator(seed=1, hits_per_readout=2)
            mon.replay(sim.generate(2000).records)
            sent.clear()
            for _ in range(refreshes):
                mon.replay(sim.generate(250).records)  # 500 readouts/s at the default 0.5 s refresh
            messages = len(sent)
            total = sum(a + b for a, b in sent)
            print(f"  {label:<26} {messages / refreshes:5.1f} messages, {total / refreshes:7,.0f} bytes per refresh "
                  f"(+ about {350 * messages / refreshes:,.0f} of headers)")
            sent.clear()
            mon.close()
    finally:
        widgets.Widget._send = original


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--chips", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--kinds", nargs="+", default=["grid", "heat", "heat+light", "matrix", "monitor"])
    parser.add_argument("--kernel-only", action="store_true", help="only the kernel-side byte count (no browser)")
    parser.add_argument("--screenshots", default=None, help="a folder to save a picture of each case in")
    parser.add_argument("--kernel-tree", default=str(ROOT), help="the source tree the notebook's kernel imports (to compare with another checkout)")
    args = parser.parse_args()
    kernel_bytes()
    if args.kernel_only:
        return 0
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="bench-marks-") as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        (work / "bench.ipynb").write_text(json.dumps(notebook()), encoding="utf-8")
        env = isolated_env(root / "state", PYTHONPATH=str(Path(args.kernel_tree).resolve()))
        # Every cell rendered, in view or not (JupyterLab's windowing would skip the status label's cell).
        tracker = root / "state" / "jupyter-config" / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
        tracker.parent.mkdir(parents=True, exist_ok=True)
        tracker.write_text(json.dumps({"windowingMode": "none"}), encoding="utf-8")
        port = free_tcp_port()
        token = secrets.token_hex(16)
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}"]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        log = (root / "lab.log").open("wb")
        server = subprocess.Popen(cmd, env=env, cwd=work, stdin=subprocess.DEVNULL, stdout=log, stderr=log)  # noqa: S603
        try:
            wait_server(f"http://127.0.0.1:{port}/api/status?token={token}")
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
                try:
                    page = browser.new_context(viewport={"width": 1600, "height": 1100}).new_page()
                    page.set_default_timeout(120_000)
                    received = [0]

                    def on_ws(ws) -> None:
                        def frame(payload) -> None:
                            received[0] += len(payload) if isinstance(payload, (bytes, str)) else 0
                        ws.on("framereceived", frame)

                    page.on("websocket", on_ws)
                    cdp = page.context.new_cdp_session(page)
                    cdp.send("Performance.enable", {"timeDomain": "threadTicks"})
                    page.goto(f"http://127.0.0.1:{port}/lab/tree/bench.ipynb?token={token}")
                    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
                    time.sleep(3.0)
                    page.locator(".jp-Notebook .jp-Cell").first.click()
                    page.keyboard.press("Shift+Enter")
                    wait_status(page, "idle")
                    cases = [(k, n) for k in args.kinds for n in args.chips]
                    print("main-thread ms per update: all, and over the same time with no update just before (the page's idle work)")
                    print(f"{'case':<16} {'main ms':>10} {'over idle':>10} {'script ms':>10} {'layout+style ms':>16} {'bytes/update':>13} {'DOM nodes':>10}")
                    for index, (kind, chips) in enumerate(cases):
                        run_cell(page, f"b{index} = bench({kind!r}, {chips}, {args.updates}, {args.rate})")
                        label = f"{kind} {chips}"
                        wait_status(page, "settled " + label, timeout=300)
                        mi = metrics(cdp)
                        wait_status(page, "running " + label)
                        m0, b0 = metrics(cdp), received[0]
                        wait_status(page, "done " + label)
                        m1, b1 = metrics(cdp), received[0]
                        nodes = page.evaluate("() => document.getElementsByTagName('*').length")
                        if args.screenshots:
                            box = page.locator(".bench-box").last
                            box.scroll_into_view_if_needed()
                            box.screenshot(path=str(Path(args.screenshots) / f"{kind}-{chips}.png"))
                        n = args.updates

                        def per(name: str, m0=m0, m1=m1, n=n) -> float:
                            return 1000.0 * (m1.get(name, 0.0) - m0.get(name, 0.0)) / n

                        idle = 1000.0 * (m0["TaskDuration"] - mi["TaskDuration"]) / n
                        print(f"{label:<16} {per('TaskDuration'):>10.1f} {per('TaskDuration') - idle:>10.1f} {per('ScriptDuration'):>10.1f} "
                              f"{per('LayoutDuration') + per('RecalcStyleDuration'):>16.1f} {(b1 - b0) / n:>13,.0f} {nodes:>10,}", flush=True)
                        if True:
                            run_cell(page, f"b{index}.close(); from IPython.display import clear_output")
                            time.sleep(1.0)
                            # The closed widgets' views are gone; clear the cell outputs too.
                            page.evaluate("() => document.querySelectorAll('.bench-box').forEach(e => e.remove())")
                            time.sleep(2.0)
                finally:
                    browser.close()
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            kill_marked_processes(env[MARK_VAR])
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
