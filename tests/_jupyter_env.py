"""Helpers shared by the tests that start Jupyter servers (test_app, test_browser) and the browser benchmarks.

Every server a test starts gets its own HOME, XDG, Jupyter, IPython and temp
folders under the test's tmp dir, and a marker variable in its environment
that every process it starts inherits (kernels included): after the test,
no process carrying the marker may be left.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

MARK_VAR = "ASTROPIX_NBMONITOR_TEST_MARK"

#: JupyterLab settings for unattended runs: no autosave (a test never rewrites
#: a notebook), no news or update checks (no pop-ups, no network).
LAB_USER_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def isolated_env(root: Path, **extra: str) -> dict[str, str]:
    """An environment whose Jupyter, IPython and browser state live under ``root``.

    The result carries a fresh value of :data:`MARK_VAR`.
    """
    env = dict(os.environ)
    dirs = {
        "HOME": "home",
        "XDG_CONFIG_HOME": "xdg-config",
        "XDG_CACHE_HOME": "xdg-cache",
        "XDG_DATA_HOME": "xdg-data",
        "XDG_RUNTIME_DIR": "xdg-runtime",
        "JUPYTER_CONFIG_DIR": "jupyter-config",
        "JUPYTER_DATA_DIR": "jupyter-data",
        "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
        "IPYTHONDIR": "ipython",
        "TMPDIR": "tmp",
    }
    for var, sub in dirs.items():
        path = root / sub
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        env[var] = str(path)
    settings = root / "jupyter-config" / "lab" / "user-settings"
    for rel, value in LAB_USER_SETTINGS.items():
        target = settings / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(value), encoding="utf-8")
    env.pop("JUPYTERLAB_SETTINGS_DIR", None)
    env.pop("JUPYTER_PATH", None)
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env[MARK_VAR] = uuid.uuid4().hex
    env.update(extra)
    return env


def marked_processes(mark: str) -> list[int]:
    """Pids of the live processes (not zombies) whose environment holds ``mark``."""
    needle = f"{MARK_VAR}={mark}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        if needle in environ.split(b"\0") and stat[stat.rindex(")") + 2] != "Z":
            found.append(int(entry.name))
    return found


def wait_no_marked_processes(mark: str, timeout: float = 10.0) -> list[int]:
    """Wait until no process carries ``mark``; return the ones still there."""
    deadline = time.monotonic() + timeout
    left = marked_processes(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = marked_processes(mark)
    return left


def kill_marked_processes(mark: str) -> None:
    """Last-resort cleanup so that a failing test leaves nothing running."""
    for pid in marked_processes(mark):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_tcp_pair() -> int:
    """A TCP port p with p and p + 1 free on 127.0.0.1 (a hub's publish and command ports)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    msg = "no two consecutive free TCP ports on 127.0.0.1"
    raise RuntimeError(msg)


def cli_command(*args: str) -> list[str]:
    """The ``astropix-nbmonitor`` command line, run with this interpreter."""
    code = "import sys; from astropix_nbmonitor.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code, *args]


class LaunchedCommand:
    """A launcher (``demo`` / ``serve``) run as a child, its stdout read line by line."""

    def __init__(self, cmd: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(  # noqa: S603 - our own command line
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_url(self, timeout: float = 90.0) -> str:
        """Return the first stdout line that starts with ``http``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if line.startswith("http"):
                return line
        msg = f"no URL line after {timeout} s; stdout {self.lines!r}; log:\n{self.log()}"
        raise AssertionError(msg)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the launcher to exit; return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self._reader.join(5.0)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._log.close()
        return code

    def rest_of_stdout(self) -> list[str]:
        rest = []
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return rest
            if line is not None:
                rest.append(line)


# --------------------------------------------------------------------------
# A JupyterLab page (playwright).


def run_all_cells(page, attempts: int = 3, *, quiet: bool = False) -> None:
    """Run all the cells of the open notebook through the menus, once the kernel is ready.

    Now and then JupyterLab shows an idle kernel a moment before it can run
    code, and a Run All in that moment runs nothing: if the first code cell
    has not started within 20 s, no cell ran, and Run All is tried again
    (said on stdout unless ``quiet``). Raises :class:`RuntimeError` when no
    attempt ran anything.
    """
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=120_000)
    page.locator("#jp-main-statusbar .jp-StatusBar-TextItem", has_text=re.compile(r"\|\s*Idle")).first.wait_for(
        timeout=120_000
    )
    prompt = page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").first
    for attempt in range(attempts):
        if attempt and not quiet:
            print(f"Run All Cells ran nothing: trying again ({attempt + 1} of {attempts})")
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if re.search(r"\[(\*|\d+)\]", prompt.inner_text()):
                return
            time.sleep(0.25)
    msg = f"Run All Cells ran nothing, {attempts} times"
    raise RuntimeError(msg)


def run_new_cell(page, code: str) -> None:
    """Add a cell at the end of the open notebook, type ``code`` (one line) into it and run it."""
    page.locator(".jp-Notebook .jp-Cell").last.click()
    page.keyboard.press("Escape")
    page.keyboard.press("b")
    page.keyboard.press("Enter")
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")


@contextlib.contextmanager
def failure_artifacts(page, cmd: LaunchedCommand, stem: Path) -> Iterator[None]:
    """On any exception in the block: ``page``'s picture to ``stem``.png and ``cmd``'s log to ``stem``.log, then re-raised."""
    try:
        yield
    except BaseException:
        stem.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(stem.with_name(stem.name + ".png")))
        stem.with_name(stem.name + ".log").write_text(cmd.log())
        raise
