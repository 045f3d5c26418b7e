"""The monitor's liveness in a real browser: a dead view says so, a hidden view pauses.

* JupyterLab (``astropix-nbmonitor demo``, the quickstart, Run All): the
  liveness element shows the monitor live. The page is then hidden (its
  ``document.visibilityState`` made ``hidden``, as a laptop lid or another
  tab does): the kernel stops sending display updates, so the dashboard's
  readout count freezes while readouts sent by the test are counted; when
  the page is visible again its count equals everything received, at once
  (within the poll's deadline). Then the kernel is killed: the page must
  show the red "stopped updating" banner (waited for up to 15 s; the 5 s is
  not asserted).
* The servers that ``demo`` and ``serve`` start run with
  ``MappingKernelManager.buffer_offline_messages=False`` (their command
  lines, read from /proc), and the element renders in Voila too.
* The element's front-end code alone, on a blank page with a stand-in model
  (short timers): a view that never got a beat (a saved notebook) says "not
  live", a beat then silence gives the red banner, a stopped monitor says
  "stopped", a hidden page sends no heartbeat and judges nothing, a model
  without a kernel raises nothing on the page.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from _jupyter_env import MARK_VAR, failure_artifacts, free_tcp_port, free_udp_port, marked_processes, wait_no_marked_processes
from test_browser import (  # the same browser, page, polls and readers
    ARTIFACTS,
    NUM_CELLS,
    assert_no_js_errors,
    cell_fills,
    browser,  # noqa: F401 - a fixture
    page,  # noqa: F401 - a fixture
    poll,
    readouts,
    run_all_cells,
    run_new_cell,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(300)]

NO_BUFFER = "--MappingKernelManager.buffer_offline_messages=False"
#: The quickstart's monitor port.
QUICKSTART_PORT = 5007


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def processes_running(mark: str, module: str) -> list[int]:
    """Marked processes whose command line runs ``python -m module`` (or names it)."""
    return [pid for pid in marked_processes(mark) if module in cmdline(pid)]


def liveness(pg) -> str:
    """The liveness element's state: ok, dead, stopped, saved ("" while not rendered)."""
    loc = pg.locator(".apx-liveness")
    if loc.count() == 0:
        return ""
    return loc.first.get_attribute("data-live") or ""


def beat(pg) -> str:
    loc = pg.locator(".apx-liveness")
    return (loc.first.get_attribute("data-beat") or "") if loc.count() else ""


def set_visible(pg, visible: bool) -> None:
    """Make the page's document visible or hidden, as the browser does for a background tab."""
    pg.evaluate(
        """visible => {
            Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => visible ? 'visible' : 'hidden'});
            Object.defineProperty(document, 'hidden', {configurable: true, get: () => !visible});
            document.dispatchEvent(new Event('visibilitychange'));
        }""",
        visible,
    )


def stable(read, what: str, settle: float = 3.0, timeout: float = 60.0):
    """Wait until ``read()`` gives the same value over ``settle`` s; return it."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= settle:
            return last
    pytest.fail(f"{what} kept changing for {timeout:.0f} s (last {last!r})")


def test_jupyterlab_hidden_page_pauses_and_a_dead_kernel_shows(launch, page, tmp_path):
    from astropix_nbmonitor.sim import AstroPix4Simulator
    from conftest import send_paced

    cmd, env = launch("demo", "--http-port", str(free_tcp_port()), "--dir", str(tmp_path / "demo"))
    url = cmd.wait_for_url()
    mark = env[MARK_VAR]
    with failure_artifacts(page, cmd, ARTIFACTS / "jupyterlab-live-failure"):
        lab = processes_running(mark, "jupyterlab")
        assert lab, "no JupyterLab server among the demo's processes"
        assert all(NO_BUFFER in cmdline(pid) for pid in lab), [cmdline(pid) for pid in lab]

        page.goto(url)
        run_all_cells(page)
        poll(f"the hit map's {NUM_CELLS} cells drawn", lambda: len(cell_fills(page)) == NUM_CELLS, timeout=120)
        page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=120_000)
        poll("the liveness element to say live", lambda: liveness(page) == "ok")
        first = poll("a readout count", lambda: readouts(page) is not None and (readouts(page),))[0]
        poll("the count to rise", lambda: (readouts(page) or 0) > first)

        # The quickstart's source stops: from now on only the test sends.
        run_new_cell(page, "src.stop()")
        page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)
        before = stable(lambda: readouts(page), "the readout count after src.stop()")

        # Hidden: no heartbeats; the kernel pauses the display (the beats stop too).
        set_visible(page, False)
        paused_beat = stable(lambda: beat(page), "the beat of a hidden page", settle=4.0, timeout=60.0)
        assert liveness(page) != "dead", "a hidden page judged its monitor dead"
        n = 3000
        run = AstroPix4Simulator(seed=77, start_id=10_000_000, rate_hz=2000).generate(n)
        assert send_paced(QUICKSTART_PORT, run.records) == n
        time.sleep(2.0)  # four refresh intervals: a live display would have shown the new count by now
        assert readouts(page) == before, "the display was updated while no view was shown"
        assert beat(page) == paused_beat

        # Visible again: brought up to date at once, with everything received while hidden.
        set_visible(page, True)
        poll("the count received while hidden", lambda: readouts(page) == before + n, timeout=30)
        poll("the beats to return", lambda: beat(page) != paused_beat, timeout=30)
        assert liveness(page) == "ok"
        assert_no_js_errors(page)

        # The kernel dies: the page says its monitor stopped updating.
        kernels = processes_running(mark, "ipykernel_launcher")
        assert len(kernels) == 1, [cmdline(pid) for pid in marked_processes(mark)]
        os.kill(kernels[0], signal.SIGKILL)
        poll("the stopped-updating banner", lambda: liveness(page) == "dead", timeout=15)
        banner = page.locator(".apx-liveness .apx-live-line").first.inner_text()
        assert "stopped updating" in banner and "last update" in banner, banner
        assert page.locator(".apx-monitor.apx-frozen").count() == 1
        ok = page.locator(".jp-Dialog button:has-text('Ok')")
        if ok.count():
            ok.first.click()  # JupyterLab's "kernel restarting" dialog, for the picture
        page.locator(".apx-toolbar").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(500)  # let the scroll settle before the picture (not an assertion)
        assert liveness(page) == "dead"  # the restarted kernel does not revive the old widget
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "jupyterlab-dead-kernel.png"))
    assert cmd.stop(signal.SIGTERM) == 0, cmd.log()
    assert wait_no_marked_processes(mark) == []


def test_voila_serve_runs_without_offline_buffer_and_shows_liveness(launch, page):
    from astropix_nbmonitor import SimulatedSource

    udp_port = free_udp_port()
    cmd, env = launch("serve", "--port", str(udp_port), "--http-port", str(free_tcp_port()))
    url = cmd.wait_for_url()
    mark = env[MARK_VAR]
    src = SimulatedSource(group="127.0.0.1", port=udp_port, rate_hz=1000, seed=8).start()
    try:
        voila = processes_running(mark, "voila")
        assert voila, "no Voila server among serve's processes"
        assert all(NO_BUFFER in cmdline(pid) for pid in voila), [cmdline(pid) for pid in voila]
        page.goto(url, timeout=120_000)
        poll("the liveness element to say live", lambda: liveness(page) == "ok", timeout=120)
        first = beat(page)
        poll("the beats to go on", lambda: beat(page) != first)
        assert_no_js_errors(page)
    finally:
        src.stop()
    assert cmd.stop(signal.SIGTERM) == 0, cmd.log()
    assert wait_no_marked_processes(mark) == []


# --------------------------------------------------------------------------
# The element's front-end code alone, on a blank page with a stand-in model.

_MOUNT = """async ([esm, options]) => {
    const mod = await import(URL.createObjectURL(new Blob([esm], {type: "text/javascript"})));
    const handlers = {};
    const traits = {state: "running", beat: 1700000000, note: "", dead_after: 0.3, heartbeat: options.heartbeat || 0.1};
    window.sent = [];
    window.noKernel = false;
    const model = {
        get: k => traits[k],
        on: (ev, cb) => { (handlers[ev] = handlers[ev] || []).push(cb); },
        off: (ev, cb) => { handlers[ev] = (handlers[ev] || []).filter(f => f !== cb); },
        send: m => { if (window.noKernel) { throw new Error("no kernel"); } window.sent.push(m); },
    };
    window.setTrait = (k, v) => { traits[k] = v; (handlers["change:" + k] || []).forEach(f => f()); };
    const monitor = document.createElement("div");
    monitor.className = "apx-monitor";
    const el = document.createElement("div");
    monitor.appendChild(el);
    // A widget's view is rendered first, attached to the page after (options.attachAfter ms).
    if (!options.attachAfter) { document.body.appendChild(monitor); }
    window.cleanup = mod.default.render({model, el});
    if (options.attachAfter) { setTimeout(() => document.body.appendChild(monitor), options.attachAfter); }
}"""


def test_liveness_front_end_states_heartbeats_and_no_kernel(page):
    from astropix_nbmonitor.monitor.liveness import Liveness

    esm = Liveness.class_traits()["_esm"].default_value
    page.set_content("<html><body></body></html>")
    page.evaluate(_MOUNT, [esm, {}])
    sent = lambda: page.evaluate("window.sent.length")  # noqa: E731
    text = lambda: page.locator(".apx-liveness .apx-live-line").inner_text()  # noqa: E731
    frozen = lambda: page.locator(".apx-monitor.apx-frozen").count() == 1  # noqa: E731

    # No beat ever reached this view (a saved notebook): grey "not live", never the red banner.
    poll("the saved-view state", lambda: liveness(page) == "saved")
    assert "not live" in text() and not frozen()
    assert sent() > 0 and page.evaluate("window.sent.every(m => m.event === 'heartbeat')")

    # Beats arrive, then stop: the red banner, the plots greyed; beats again: gone.
    page.evaluate("window.setTrait('beat', 1700000100)")
    assert liveness(page) == "ok"
    poll("the dead banner", lambda: liveness(page) == "dead")
    assert "stopped updating" in text() and "kernel restarted or busy?" in text() and frozen()
    page.evaluate("window.setTrait('beat', 1700000200)")
    assert liveness(page) == "ok" and not frozen()

    # Stopped on purpose: "stopped", however long no beat comes.
    page.evaluate("window.setTrait('state', 'stopped')")
    time.sleep(1.0)  # three dead_after of the stand-in: a running monitor would be "dead" by now
    assert liveness(page) == "stopped" and text() == "stopped"

    # A hidden page sends no heartbeat and judges nothing; visible again, one heartbeat at once.
    page.evaluate("window.setTrait('state', 'running')")
    set_visible(page, False)
    hidden_count = sent()
    time.sleep(1.0)
    assert sent() == hidden_count
    assert liveness(page) != "dead"
    set_visible(page, True)
    assert sent() > hidden_count

    # No kernel behind the model (its send throws): no error on the page.
    page.evaluate("window.noKernel = true")
    time.sleep(0.5)
    assert page.errors.errors == []

    # Removed: its timer stops.
    page.evaluate("window.noKernel = false; window.cleanup()")
    after = sent()
    time.sleep(0.5)
    assert sent() == after


def test_liveness_says_the_page_is_shown_as_soon_as_it_is_attached(page):
    """A view rendered before it is attached (as a widget's is) sends its first heartbeat once on the page.

    With heartbeats every hour, the only heartbeat in the first seconds is the
    one sent on attaching: without it, a page hidden before the first interval
    ended would never have armed the kernel's tracker, and never paused.
    """
    from astropix_nbmonitor.monitor.liveness import Liveness

    esm = Liveness.class_traits()["_esm"].default_value
    page.set_content("<html><body></body></html>")
    page.evaluate(_MOUNT, [esm, {"heartbeat": 3600, "attachAfter": 300}])
    assert page.evaluate("window.sent.length") == 0  # not on the page yet: nothing said
    poll("the first heartbeat once attached", lambda: page.evaluate("window.sent.length") == 1, timeout=5)
    assert page.evaluate("window.sent[0].event") == "heartbeat"
    time.sleep(0.5)
    assert page.evaluate("window.sent.length") == 1  # one, not one per poll
    page.evaluate("window.cleanup()")
