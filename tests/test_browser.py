"""The live monitor in a real browser: JupyterLab (the demo) and Voila (serve).

Debian's chromium, driven by playwright, opens what a user opens:

* ``astropix-nbmonitor demo``: JupyterLab on the demo's copy of
  ``quickstart.ipynb``. The demo copy leaves out the notebook's cells tagged
  ``cleanup`` (the last cell, which stops the source and the monitor so that
  unattended runs such as nbval leave nothing behind): after *Run All* the
  monitor is live, exactly as a newcomer sees it, and the test can drive
  its buttons. The committed notebook is never opened, so nothing can
  rewrite it (Lab autosave is also off, in the test's own settings).
* ``astropix-nbmonitor serve``: the Voila dashboard, fed by a simulated
  source that the test runs on a free UDP port.

On both, the test checks that the hit map renders its 560 cells, that the
dashboard's readout count rises and the cells' colours change while data
flow, that Stop freezes the count and Start resumes it, that Reset (while
stopped) clears the count and the map, and that the page logged no
JavaScript error; it saves a screenshot to ``test-artifacts/``. The Voila
page is also reloaded, as control-room screens are: the new page must be
live again, and the old page's kernel gone. Then it stops
the server with SIGTERM and checks that no process it started is left.

Every wait is a poll with a generous deadline. Servers, kernels and chromium
keep their state in the test's tmp dir (see ``_jupyter_env``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from _jupyter_env import (
    MARK_VAR,
    failure_artifacts,
    free_tcp_port,
    free_udp_port,
    marked_processes,
    run_all_cells,
    run_new_cell,
    wait_no_marked_processes,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM = os.environ.get("ASTROPIX_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
NUM_CELLS = 35 * 16

playwright_sync = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[browser]')"
)
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"chromium not found at {CHROMIUM} (apt-get install chromium, or set ASTROPIX_CHROMIUM)",
        allow_module_level=True,
    )

# Console errors that say nothing about this project: Voila's default template
# asks a CDN for web fonts, which fails offline.
HARMLESS_CONSOLE_ERRORS = (
    re.compile(r"fonts\.googleapis\.com|fonts\.gstatic\.com"),
    re.compile(r"Failed to load resource: net::ERR_(NAME_NOT_RESOLVED|INTERNET_DISCONNECTED|CONNECTION_REFUSED|ADDRESS_UNREACHABLE|TIMED_OUT)"),
)


# --------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            browser.close()


class PageErrors:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        self.ignored: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _on_console(self, msg) -> None:
        if msg.type != "error":
            return
        text = f"console.error: {msg.text} ({msg.location.get('url', '')})"
        if any(p.search(text) for p in HARMLESS_CONSOLE_ERRORS):
            self.ignored.append(text)
        else:
            self.errors.append(text)


@pytest.fixture
def page(browser, tmp_path):
    context = browser.new_context(viewport={"width": 1600, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.errors = PageErrors(page)
    try:
        yield page
    finally:
        context.close()




# --------------------------------------------------------------------------
# Reading the widget from the page.


def poll(what: str, predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.25):
    """Return the first truthy value of ``predicate()``; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last value {last!r})")


def settled_readouts(page, settle: float = 1.0, timeout: float = 15.0) -> int | None:
    """The dashboard's readout count once it stayed the same for ``settle`` s (two refresh intervals)."""
    deadline = time.monotonic() + timeout
    last, since = readouts(page), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = readouts(page)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            return last
    pytest.fail(f"the readout count kept changing for {timeout:.0f} s after Stop (last {last!r})")


def readouts(page) -> int | None:
    """The dashboard's readout count (None while it is not shown)."""
    loc = page.locator(".apx-dashboard .apx-num-readouts")
    if loc.count() == 0:
        return None
    text = loc.first.inner_text().replace(",", "").strip()
    return int(text) if text.isdigit() else None


#: The colour of each cell of the main hit map, row by row, as drawn: the map's colours are a
#: canvas of one pixel a cell (row 0 on top) inside the figure, under its transparent plot area;
#: masked pixels are drawn in the grey of cells without a value.
CELL_FILLS_JS = """() => {
    const figure = document.querySelector('.apx-hitmap');
    const canvas = figure ? figure.querySelector('canvas.apx-matrix-canvas') : null;
    if (!canvas || canvas.width !== 16 || canvas.height !== 35) return [];
    const d = canvas.getContext('2d').getImageData(0, 0, 16, 35).data;
    const out = [];
    for (let i = 0; i < 16 * 35; i++) out.push(`rgb(${d[4 * i]}, ${d[4 * i + 1]}, ${d[4 * i + 2]})`);
    return out;
}"""


def cell_fills(page) -> list[str]:
    return page.evaluate(CELL_FILLS_JS)


def cell_center(page, column: int, row: int) -> tuple[float, float]:
    """Where on the screen the centre of the main hit map's cell (column, row) is (the map scrolled into view)."""
    canvas = page.locator(".apx-hitmap canvas.apx-matrix-canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    return box["x"] + box["width"] * (column + 0.5) / 16, box["y"] + box["height"] * (row + 0.5) / 35


def exercise_monitor(page, name: str) -> None:
    """The checks common to JupyterLab and Voila, on a page showing a live monitor."""
    poll(f"the hit map's {NUM_CELLS} cells drawn", lambda: len(cell_fills(page)) == NUM_CELLS)
    first = poll("a readout count on the dashboard", lambda: readouts(page) is not None and (readouts(page),))[0]
    poll("the readout count to rise", lambda: (readouts(page) or 0) > first)
    fills = cell_fills(page)
    assert len(fills) == NUM_CELLS
    poll("the hit-map colours to change", lambda: cell_fills(page) != fills)
    poll("the hit map to show a spread of counts", lambda: len(set(cell_fills(page))) > 3)
    # The whole widget in view (JupyterLab scrolls to the last cell run).
    page.locator(".apx-toolbar").first.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.mouse.move(1, 1)  # no hover tool bar over the figures
    time.sleep(0.5)  # let the scroll settle before the picture (not an assertion)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

    # Stop freezes the count.
    page.locator("button.apx-stop").first.click()
    poll("the Start button to be enabled", lambda: page.locator("button.apx-start").first.is_enabled())
    # The buttons may change before the last refresh, which shows the readouts received before
    # the Stop (the backlog drained): the count settles once, then must not move.
    frozen = settled_readouts(page)
    time.sleep(2.0)  # four refresh intervals: long enough for a running monitor to count more
    assert readouts(page) == frozen, "the readout count moved after Stop"

    # Start resumes it.
    page.locator("button.apx-start").first.click()
    poll("the readout count to rise after Start", lambda: (readouts(page) or 0) > frozen)

    # Reset (while stopped) clears the count and the map.
    page.locator("button.apx-stop").first.click()
    poll("the Start button to be enabled", lambda: page.locator("button.apx-start").first.is_enabled())
    page.locator("button.apx-reset").first.click()
    poll("the readout count to be 0 after Reset", lambda: readouts(page) == 0)
    poll("a uniform (empty) hit map after Reset", lambda: len(set(cell_fills(page))) == 1)
    page.screenshot(path=str(ARTIFACTS / f"{name}-reset.png"))

    # And it runs again after a reset.
    page.locator("button.apx-start").first.click()
    poll("the readout count to rise after Reset and Start", lambda: (readouts(page) or 0) > 0)
    poll("the hit map to fill again", lambda: len(set(cell_fills(page))) > 1)


def count_rises_while_a_cell_sleeps(page) -> None:
    """A cell busy in ``time.sleep`` does not freeze the monitor (it runs on threads).

    A new cell is added at the end of the notebook and run; while its prompt
    still shows ``[*]`` the dashboard's readout count must rise.
    """
    running = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt:text-is('[*]:')")
    run_new_cell(page, "import time; time.sleep(8)")
    poll("the sleeping cell to start", lambda: running.count() > 0, timeout=20)
    before = readouts(page) or 0
    poll(
        "the readout count to rise while a cell sleeps",
        lambda: (readouts(page) or 0) > before and running.count() > 0,
        timeout=6,
    )
    poll("the sleeping cell to finish", lambda: running.count() == 0, timeout=30)


def fits_a_narrow_page(page) -> None:
    """At 1280 px with the file browser open, every plot is whole and nothing scrolls sideways."""
    page.set_viewport_size({"width": 1280, "height": 960})
    if not page.locator("#filebrowser").is_visible():
        page.locator('.jp-SideBar [data-id="filebrowser"]').first.click()
    poll("the file browser", lambda: page.locator("#filebrowser").is_visible())
    page.evaluate("() => document.querySelector('.apx-toolbar').scrollIntoView({block: 'start'})")
    page.wait_for_timeout(1500)  # let the figures follow the new width
    geometry = page.evaluate(
        """() => {
            const canvas = document.querySelector('.apx-canvas');
            const area = canvas.closest('.jp-OutputArea-output') || canvas.parentElement;
            const figures = Array.from(canvas.querySelectorAll(':scope > .bqplot')).map(f => f.getBoundingClientRect());
            const notebook = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer') || document.querySelector('.jp-Notebook');
            return {
                areaRight: area.getBoundingClientRect().right,
                figureRights: figures.map(r => r.right),
                figureWidths: figures.map(r => r.width),
                scrollWidth: notebook.scrollWidth,
                clientWidth: notebook.clientWidth,
                areaScroll: area.scrollWidth - area.clientWidth,
            };
        }"""
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-1280.png"))
    assert len(geometry["figureRights"]) == 3, geometry
    assert all(right <= geometry["areaRight"] + 1 for right in geometry["figureRights"]), geometry
    assert all(width > 150 for width in geometry["figureWidths"]), geometry
    assert geometry["scrollWidth"] <= geometry["clientWidth"] + 1, geometry
    assert geometry["areaScroll"] <= 1, geometry
    page.locator(".apx-scale button:text-is('log')").click()  # the log colour bar's title must fit too
    page.wait_for_timeout(1500)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-1280-log.png"))
    page.locator(".apx-scale button:text-is('linear')").click()


def assert_no_js_errors(page) -> None:
    assert page.errors.errors == [], "\n".join(page.errors.errors)


# --------------------------------------------------------------------------
# Tests.


#: The boxes of a layout's chip maps on the page, and of each map's colour canvas.
JS_CHIP_BOXES = """() => {
    const out = {};
    for (const figure of document.querySelectorAll('.apx-chips .apx-chipmap')) {
        const chip = Array.from(figure.classList).find(c => /^apx-chip-\\d+$/.test(c));
        const canvas = figure.querySelector('canvas.apx-matrix-canvas');
        const caption = figure.querySelector('.apx-matrix-caption');
        const f = figure.getBoundingClientRect(), c = canvas ? canvas.getBoundingClientRect() : null;
        const t = caption ? caption.getBoundingClientRect() : null;
        out[chip.slice('apx-chip-'.length)] = {x: f.x, y: f.y, w: f.width, h: f.height,
            canvas: c && {x: c.x, y: c.y, w: c.width, h: c.height},
            caption: t && {x: t.x, y: t.y, w: t.width, h: t.height, text: caption.textContent}};
    }
    return out;
}"""


JS_LAYOUT_PIXEL_TITLE = """() => {
    const chips = document.querySelector('.apx-chips');
    const monitor = chips && chips.closest('.apx-monitor');
    const title = monitor && monitor.querySelector('.apx-pixel .mainheading');
    return title ? title.textContent : '';
}"""


def layout_places_each_chip(page) -> None:
    """A layout with a hole and a ragged row: each chip's map in its cell, its colours and title line inside it; hover and click."""
    run_new_cell(page, "lay = AstroPix4SimpleMonitor(port=0, layout=[[5, None, 9], [30]]); lay")
    poll("three chip maps", lambda: len(page.evaluate(JS_CHIP_BOXES)) == 3, timeout=60)
    poll("their colour canvases", lambda: all(b["canvas"] for b in page.evaluate(JS_CHIP_BOXES).values()), timeout=60)
    boxes = page.evaluate(JS_CHIP_BOXES)
    five, nine, thirty = boxes["5"], boxes["9"], boxes["30"]
    # Chip 9 two cells right of chip 5 (the hole between them), chip 30 under chip 5.
    assert abs(nine["y"] - five["y"]) < 2 and nine["x"] > five["x"] + 1.5 * five["w"], boxes
    assert abs(thirty["x"] - five["x"]) < 2 and thirty["y"] >= five["y"] + five["h"] - 2, boxes
    for chip, box in boxes.items():  # the canvas lies in its figure's plot area, the title line above it
        c, t = box["canvas"], box["caption"]
        assert box["x"] < c["x"] and c["x"] + c["w"] < box["x"] + box["w"], boxes
        assert box["y"] < c["y"] and c["y"] + c["h"] < box["y"] + box["h"] and c["w"] > 50 and c["h"] > 50, boxes
        assert t and t["text"].startswith(f"chip {chip}") and t["h"] > 10, boxes
        assert box["y"] <= t["y"] and t["y"] + t["h"] <= c["y"] + 1 and abs(t["x"] - c["x"]) < 2 and abs(t["w"] - c["w"]) < 2, boxes
    # No layer of cells on a chip map: the colour canvas names the cell under the mouse.
    page.locator(".apx-chips .apx-chip-9").first.scroll_into_view_if_needed()
    c = page.evaluate(JS_CHIP_BOXES)["9"]["canvas"]
    at = (c["x"] + c["w"] * 9.5 / 16, c["y"] + c["h"] * 20.5 / 35)
    page.mouse.move(at[0] - 1, at[1])
    page.mouse.move(*at)
    hint = page.locator(".apx-chips .apx-chip-9 .apx-matrix-hint")
    poll("the hover text of chip 9's cell", lambda: hint.count() > 0 and hint.first.inner_text().startswith("row 20, column 9, chip 9: 0 hits"))
    page.mouse.click(*at)
    poll("chip 9's pixel selected by a click", lambda: page.evaluate(JS_LAYOUT_PIXEL_TITLE).startswith("Pixel column 9, row 20, chip 9"))
    page.mouse.move(1, 1)
    poll("the hover text gone with the mouse", lambda: not hint.first.is_visible())
    run_new_cell(page, "lay.close()")


def test_jupyterlab_demo_quickstart_is_live(launch, page, tmp_path):
    """``demo``: JupyterLab, Run All on the quickstart, then drive the widget."""
    cmd, env = launch("demo", "--http-port", str(free_tcp_port()), "--dir", str(tmp_path / "demo"))
    url = cmd.wait_for_url()
    with failure_artifacts(page, cmd, ARTIFACTS / "jupyterlab-failure"):
        page.goto(url)
        run_all_cells(page)
        # Every cell ran (the kernel is idle again after the last one) and none failed.
        poll("the widget", lambda: page.locator(".apx-hitmap").count() > 0, timeout=120)
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=120_000)
    failed = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    assert failed.count() == 0, failed.all_inner_texts()
    assert page.locator(".jp-Cell .jp-InputPrompt:text-is('[*]:')").count() == 0

    exercise_monitor(page, "jupyterlab-quickstart")
    count_rises_while_a_cell_sleeps(page)
    fits_a_narrow_page(page)
    layout_places_each_chip(page)
    assert_no_js_errors(page)

    assert cmd.stop(signal.SIGTERM) == 0, cmd.log()
    assert wait_no_marked_processes(env[MARK_VAR]) == []


def test_voila_dashboard_is_live(launch, page):
    """``serve``: the Voila dashboard of a UDP port fed by a simulated source."""
    from astropix_nbmonitor import SimulatedSource

    udp_port = free_udp_port()
    cmd, env = launch("serve", "--port", str(udp_port), "--http-port", str(free_tcp_port()))
    url = cmd.wait_for_url()
    src = SimulatedSource(group="127.0.0.1", port=udp_port, rate_hz=2000, seed=5).start()
    try:
        page.goto(url, timeout=120_000)
        exercise_monitor(page, "voila-dashboard")
        assert page.locator("text=Traceback").count() == 0
        # A control-room screen gets reloaded: the new page's kernel takes the
        # port over from the old one, which Voila shuts down.
        processes = len(marked_processes(env[MARK_VAR]))
        page.reload()
        poll(f"{NUM_CELLS} hit-map cells after a reload", lambda: len(cell_fills(page)) == NUM_CELLS)
        first = poll("a readout count after the reload", lambda: readouts(page) is not None and (readouts(page),))[0]
        poll("the readout count to rise after the reload", lambda: (readouts(page) or 0) > first)
        assert page.locator("text=Not monitoring").count() == 0
        poll("the old page's kernel to be shut down", lambda: len(marked_processes(env[MARK_VAR])) == processes)
        assert_no_js_errors(page)
    finally:
        src.stop()
    assert cmd.stop(signal.SIGTERM) == 0, cmd.log()
    assert wait_no_marked_processes(env[MARK_VAR]) == []


def _wait_tcp(port: int, proc, timeout: float = 30.0) -> None:
    """Wait until something listens on 127.0.0.1:port (a hub), failing if ``proc`` died."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the hub exited with status {proc.returncode}")
        with socket.socket() as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def test_serve_hub_three_pages_at_once_are_live(launch, browser):
    """``serve --hub``: three screens on one hub's stream at the same time, all live, none bound to UDP."""
    from astropix_nbmonitor import SimulatedSource

    udp_port, tcp_port = free_udp_port(), free_tcp_port()
    hub, _ = launch("hub", "--port", str(udp_port), "--publish", f"tcp://127.0.0.1:{tcp_port}", "--token", "t0k3n")
    _wait_tcp(tcp_port, hub.proc)
    cmd, env = launch("serve", "--hub", f"tcp://127.0.0.1:{tcp_port}", "--http-port", str(free_tcp_port()))
    url = cmd.wait_for_url()
    src = SimulatedSource(group="127.0.0.1", port=udp_port, rate_hz=2000, seed=6).start()
    context = browser.new_context(viewport={"width": 1600, "height": 1100})
    try:
        pages = []
        for _ in range(3):
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.errors = PageErrors(page)
            page.goto(url, timeout=120_000)
            pages.append(page)
        for i, page in enumerate(pages):
            page.bring_to_front()  # a background tab does not render (no animation frames)
            poll(f"{NUM_CELLS} cells on page {i}", lambda p=page: len(cell_fills(p)) == NUM_CELLS)
            first = poll(f"a count on page {i}", lambda p=page: readouts(p) is not None and (readouts(p),))[0]
            poll(f"the count to rise on page {i}", lambda p=page, f=first: (readouts(p) or 0) > f)
            poll(f"colours on page {i}", lambda p=page: len(set(cell_fills(p))) > 3)
            # A page without the hub's token is a read-only viewer: its buttons are disabled.
            assert page.locator("button.apx-stop").first.is_disabled()
            assert page.locator("text=Viewer of hub").count() == 1
            assert page.locator("text=Not monitoring").count() == 0
            assert_no_js_errors(page)
        # All three still live at the same time: every page's count went on rising.
        counts = [readouts(page) for page in pages]
        for i, page in enumerate(pages):
            page.bring_to_front()
            poll(f"page {i} still counting", lambda p=page, c=counts[i]: (readouts(p) or 0) > c)
        ARTIFACTS.mkdir(exist_ok=True)
        pages[0].screenshot(path=str(ARTIFACTS / "voila-hub-viewer.png"))
    finally:
        context.close()
        src.stop()
    assert cmd.stop(signal.SIGTERM) == 0, cmd.log()
    assert hub.stop(signal.SIGTERM) == 0, hub.log()
    assert wait_no_marked_processes(env[MARK_VAR]) == []



#: The pixel panel's title, read in one step ("" while the panel is hidden or gone): a locator
#: counted and then read could wait a minute for an element removed in between.
JS_PIXEL_TITLE = """() => {
    const box = document.querySelector('.apx-pixel-box');
    if (!box || box.offsetParent === null || getComputedStyle(box).display === 'none') return '';
    const title = document.querySelector('.apx-pixel .mainheading');
    return title ? (title.textContent || '') : '';
}"""


def pixel_title(page) -> str:
    """The title of the selected pixel's TOT figure ("" while hidden)."""
    return page.evaluate(JS_PIXEL_TITLE)


def test_jupyterlab_shift_window_noisy_mask_alarm_and_pixel_drill_down(launch, page, tmp_path):
    """``demo``: a noisy pixel appears, the Mask noisy button masks it, an alarm latches, a click drills down.

    A second simulated source with a noisy pixel (row 30, column 2) sends to
    the quickstart's monitor, so its readout ids collide with the first
    source's: the ``lost`` alarm latches, as it would on a real stream. The
    picture of the monitor (10 s window, the masked noisy pixel, a selected
    pixel, latched alarms) is saved as ``test-artifacts/shift.png``.
    """
    cmd, env = launch("demo", "--http-port", str(free_tcp_port()), "--dir", str(tmp_path / "demo"))
    url = cmd.wait_for_url()
    with failure_artifacts(page, cmd, ARTIFACTS / "shift-failure"):
        page.goto(url)
        run_all_cells(page)
        poll("the widget", lambda: page.locator(".apx-hitmap").count() > 0, timeout=120)
        poll(f"the hit map's {NUM_CELLS} cells drawn", lambda: len(cell_fills(page)) == NUM_CELLS)
        page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=120_000)
        run_new_cell(
            page,
            "noisy_src = SimulatedSource(port=mon.port, rate_hz=1000, seed=9, noisy_pixels=[(30, 2)], noisy_rate=0.5).start(); mon.window = 10",
        )
        poll("the noisy pixel on the dashboard", lambda: "column 2, row 30" in page.locator(".apx-dashboard .apx-noisy").first.inner_text())
        poll("a latched alarm at the top", lambda: page.locator(".apx-dashboard .apx-alarms .apx-alarm").count() > 0)
        page.locator("button.apx-mask-noisy").first.click()
        poll("the masked hits on the dashboard", lambda: page.locator(".apx-dashboard .apx-masked-hits").count() > 0)
        poll("the masked pixel in the neutral colour", lambda: {"#c8c8c8", "rgb(200, 200, 200)"} & set(cell_fills(page)))
        poll("the window in the hit map's title", lambda: "last 10 s" in (page.locator(".apx-hitmap .mainheading").first.text_content() or ""))
        at = cell_center(page, 8, 17)
        page.mouse.click(*at)  # whatever mark is on top of that cell (the mask layer with a mask), the map gets it
        # The panel appears first with its generic title, then with the pixel's.
        spectrum_title = re.compile(r"Pixel column \d+, row \d+: TOT, [\d,]+ hits")
        poll("the selected pixel's spectrum", lambda: spectrum_title.match(pixel_title(page) or ""))
        spectrum = page.locator(".apx-pixel path.area")  # the spectrum: a filled step line
        poll("the pixel's TOT spectrum", lambda: spectrum.count() > 0 and len(spectrum.first.get_attribute("d") or "") > 100)
        # The mouse is on the cell: the kernel answers with its counts, shown by the mouse.
        page.mouse.move(at[0] + 1, at[1])
        tooltip = page.locator(".apx-hitmap .apx-matrix-hint")
        poll("the cell's tooltip", lambda: re.match(r"row 17, column 8: ([\d,]+ hits|masked)", tooltip.first.inner_text() if tooltip.count() else ""))
        page.locator(".apx-toolbar").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.mouse.move(1, 1)
        time.sleep(1.0)  # let the plots settle before the picture (not an assertion)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "shift.png"))
        # A second click on the same pixel deselects it.
        page.locator(".apx-toolbar").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.mouse.click(*cell_center(page, 8, 17))
        poll("the pixel panel to hide", lambda: pixel_title(page) == "")
        # Acknowledge: the alarms whose condition cleared go (the colliding ids may still hold "lost").
        run_new_cell(page, "noisy_src.stop()")
        page.locator("button.apx-acknowledge").first.click()
        assert_no_js_errors(page)
    assert cmd.stop(signal.SIGTERM) == 0, cmd.log()
    assert wait_no_marked_processes(env[MARK_VAR]) == []


# --------------------------------------------------------------------------
# A shift-long page (issue 14): nothing piles up in the DOM refresh after refresh.

#: The monitor's elements (its output area), leaving out the axes' ticks, whose number follows
#: the scales' ranges (a colour bar of 0..3 hits has 4 ticks, of 0..5,000 six).
#: Left out of the counts: axis ticks (their number follows the scales) and the dashboard block
#: that holds latched alarms (an alarm that fires on a loaded machine is content, not growth;
#: the alarms are bounded by their rules).
JS_MONITOR_SKIP = """(e) => e.closest('.tick') !== null || (() => {
    const block = e.closest('.apx-dashboard > *');
    return block !== null && block.querySelector('.apx-alarms') !== null;
})()"""

JS_MONITOR_ELEMENTS = """() => {
    const skip = """ + JS_MONITOR_SKIP + """;
    const root = document.querySelector('.apx-toolbar').closest('.jp-OutputArea-output');
    let n = 0;
    for (const e of root.querySelectorAll('*')) if (!skip(e)) n++;
    return n;
}"""


#: The same elements by figure, tag and class (what changed, in a failure's message).
JS_MONITOR_CENSUS = """() => {
    const skip = """ + JS_MONITOR_SKIP + """;
    const root = document.querySelector('.apx-toolbar').closest('.jp-OutputArea-output');
    const out = {};
    for (const e of root.querySelectorAll('*')) {
        if (skip(e)) continue;
        const fig = e.closest('.apx-hitmap, .apx-tot, .apx-rates, .apx-pixel, .apx-pixel-rate, .apx-dashboard, .apx-toolbar');
        const where = fig ? Array.from(fig.classList).find(c => c.startsWith('apx-')) : 'other';
        const key = where + ' ' + e.tagName.toLowerCase() + '.' + (e.getAttribute('class') || '').split(' ')[0];
        out[key] = (out[key] || 0) + 1;
    }
    return out;
}"""


class Census:
    """The monitor's element count, and by kind, to say what changed."""

    def __init__(self, page) -> None:
        self.total = int(page.evaluate(JS_MONITOR_ELEMENTS))
        self.kinds = page.evaluate(JS_MONITOR_CENSUS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Census) and self.total == other.total

    def __repr__(self) -> str:
        return f"{self.total} elements"

    def diff(self, other: Census) -> dict[str, tuple[int, int]]:
        keys = set(self.kinds) | set(other.kinds)
        return {k: (self.kinds.get(k, 0), other.kinds.get(k, 0)) for k in sorted(keys) if self.kinds.get(k) != other.kinds.get(k)}


def monitor_elements(page) -> Census:
    return Census(page)


def assert_same_elements(page, before: Census) -> None:
    now = Census(page)
    assert now == before, f"{before} then {now}: {before.diff(now)}"


def wait_refreshes(page, n: int) -> None:
    """Wait until the dashboard's readout count has changed ``n`` times (data flow: one change a refresh)."""
    seen = [readouts(page)]
    deadline = time.monotonic() + 30 + 2 * n
    while len(seen) <= n:
        if time.monotonic() > deadline:
            pytest.fail(f"only {len(seen) - 1} refreshes seen, {n} awaited")
        value = readouts(page)
        if value is not None and value != seen[-1]:
            seen.append(value)
        time.sleep(0.05)


def test_jupyterlab_page_does_not_grow_refresh_after_refresh(launch, page, tmp_path):
    """``demo``: after the first refresh, 25 refreshes later, with the window, log colours and a selected pixel
    exercised on the way, the monitor has exactly as many elements as after the first (ticks apart).

    bqplot's ``Bars`` left an empty ``<g>`` per redraw in the TOT spectrum (240 nodes a minute):
    a page open for a 12-hour shift would hold 170,000 more nodes at its end.
    """
    cmd, env = launch("demo", "--http-port", str(free_tcp_port()), "--dir", str(tmp_path / "demo"))
    url = cmd.wait_for_url()
    with failure_artifacts(page, cmd, ARTIFACTS / "dom-growth-failure"):
        page.goto(url)
        run_all_cells(page)
        poll(f"the hit map's {NUM_CELLS} cells drawn", lambda: len(cell_fills(page)) == NUM_CELLS, timeout=120)
        poll("a readout count", lambda: (readouts(page) or 0) > 0)
        page.locator(".apx-toolbar").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.mouse.move(1, 1)  # no tooltip
        wait_refreshes(page, 1)
        first = monitor_elements(page)

        # Twenty-five refreshes with data, the map in linear colours, the whole run.
        wait_refreshes(page, 25)
        assert_same_elements(page, first)

        # A selected pixel: its panel appears, then it does not grow either.
        page.mouse.click(*cell_center(page, 8, 17))
        poll("the selected pixel's spectrum", lambda: pixel_title(page).startswith("Pixel column"))
        page.mouse.move(1, 1)
        wait_refreshes(page, 2)
        with_pixel = monitor_elements(page)
        assert with_pixel.total > first.total
        wait_refreshes(page, 20)
        assert_same_elements(page, with_pixel)
        page.mouse.click(*cell_center(page, 8, 17))
        poll("the pixel panel to hide", lambda: pixel_title(page) == "")

        # A 10 s window and log colours for 20 refreshes, then back to the whole run in linear colours.
        page.locator(".apx-window select").first.select_option(label="last 10 s")
        poll("the window in the title", lambda: "last 10 s" in (page.locator(".apx-hitmap .mainheading").first.text_content() or ""))
        page.locator(".apx-scale button:text-is('log')").first.click()
        poll("log colours", lambda: "log10" in (page.locator(".apx-hitmap .mainheading").first.text_content() or ""))
        page.mouse.move(1, 1)
        wait_refreshes(page, 2)
        windowed = monitor_elements(page)
        wait_refreshes(page, 20)
        assert_same_elements(page, windowed)
        page.locator(".apx-window select").first.select_option(label="whole run")
        page.locator(".apx-scale button:text-is('linear')").first.click()
        poll("linear colours, whole run", lambda: (page.locator(".apx-hitmap .mainheading").first.text_content() or "") == "Hit map")
        page.mouse.move(1, 1)
        wait_refreshes(page, 3)
        assert_same_elements(page, first)
        assert_no_js_errors(page)
    assert cmd.stop(signal.SIGTERM) == 0, cmd.log()
    assert wait_no_marked_processes(env[MARK_VAR]) == []
