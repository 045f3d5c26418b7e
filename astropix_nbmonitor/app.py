"""The ``demo`` and ``serve`` commands: JupyterLab and Voila launchers.

``astropix-nbmonitor demo`` copies the example notebooks to a working folder
and starts JupyterLab on the quickstart; ``astropix-nbmonitor serve`` shows
the monitor of one UDP address as a Voila dashboard, for a control-room
screen. Both run the server as a child process in its own process group,
print the URL to open (token included) on a line of its own, forward
Ctrl-C and SIGTERM to the child, and leave no server or kernel behind. The
server's own output (and its kernels') goes to a log file in the temporary
folder, whose path is printed: the terminal shows one URL, ours.

The command-line entry point (:mod:`astropix_nbmonitor.cli`) registers the
two sub-commands with :func:`add_demo_arguments` / :func:`run_demo` and
:func:`add_serve_arguments` / :func:`run_serve`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .cli import emit, group_arg, port_arg

__all__ = [
    "DASHBOARD_NOTEBOOK",
    "DEMO_NOTEBOOKS",
    "add_demo_arguments",
    "add_serve_arguments",
    "dashboard_path",
    "notebooks_dir",
    "prepare_notebooks",
    "run_demo",
    "run_serve",
    "start_when_free",
]

logger = logging.getLogger(__name__)

#: The example notebooks that ``demo`` copies, in the order a newcomer reads them.
DEMO_NOTEBOOKS = ("quickstart.ipynb", "custom_monitor.ipynb", "replay.ipynb")
#: The notebook that ``serve`` renders with Voila (shipped inside the package).
DASHBOARD_NOTEBOOK = "dashboard.ipynb"
#: Cells with this tag stop what a notebook started; ``demo`` leaves them out.
CLEANUP_TAG = "cleanup"

DEFAULT_DEMO_HTTP_PORT = 8888
DEFAULT_SERVE_HTTP_PORT = 8866
DEFAULT_GROUP = "127.0.0.1"
DEFAULT_UDP_PORT = 5007

#: Environment variables through which ``serve`` tells the dashboard what to monitor.
GROUP_ENV = "ASTROPIX_GROUP"
PORT_ENV = "ASTROPIX_PORT"
#: The hub the dashboard's monitor attaches to, and its command token.
HUB_ENV = "ASTROPIX_HUB"
HUB_TOKEN_ENV = "ASTROPIX_HUB_TOKEN"
#: Longest wait for ``serve``'s own hub to listen (s).
_HUB_READY_TIMEOUT_S = 30.0

_READY_TIMEOUT_S = 90.0
#: Given to the servers that ``demo`` and ``serve`` start: jupyter_server
#: otherwise keeps every message of a kernel whose page is gone in an
#: unbounded buffer, to replay it when the page comes back (a night of live
#: widget updates: hundreds of MB). A page that comes back gets the widgets'
#: current state anyway. Users of their own JupyterLab set the same option
#: (README, "Unattended nights and a dead view").
NO_OFFLINE_BUFFER = "--MappingKernelManager.buffer_offline_messages=False"
_STOP_TIMEOUT_S = 15.0
_PROG = "astropix-nbmonitor"


class LaunchError(RuntimeError):
    """A server could not be started (missing package, port taken...)."""


# --------------------------------------------------------------------------
# Where the notebooks are.


def notebooks_dir() -> Path:
    """Return the folder holding the example notebooks.

    An installed wheel carries them in ``astropix_nbmonitor/notebooks``; a
    source checkout (or an editable install) has them in ``notebooks/`` at
    the project root.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "notebooks", here.parent / "notebooks"):
        if all((candidate / name).is_file() for name in DEMO_NOTEBOOKS):
            return candidate
    msg = f"the example notebooks were not found next to {here}"
    raise FileNotFoundError(msg)


def dashboard_path() -> Path:
    """Return the path of the Voila dashboard notebook shipped with the package."""
    return Path(__file__).resolve().with_name(DASHBOARD_NOTEBOOK)


def _strip_notebook(nb: dict, drop_tags: Iterable[str]) -> dict:
    """Drop the cells carrying any of ``drop_tags`` and clear all outputs."""
    drop = set(drop_tags)
    cells = []
    for cell in nb.get("cells", []):
        if drop & set(cell.get("metadata", {}).get("tags", [])):
            continue
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cells.append(cell)
    nb["cells"] = cells
    # The stored widget state belongs to the outputs just cleared.
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def prepare_notebooks(
    dest: str | os.PathLike[str],
    *,
    names: Sequence[str] = DEMO_NOTEBOOKS,
    drop_tags: Iterable[str] = (CLEANUP_TAG,),
    overwrite: bool = False,
) -> list[Path]:
    """Copy example notebooks to ``dest``, ready to be run by hand.

    Outputs are cleared and the cells tagged ``cleanup`` (the ones that stop
    the source and the monitor at the end, for unattended runs) are left out,
    so that "Run All" ends on a live monitor.

    Parameters
    ----------
    dest
        Folder to write to; created if needed.
    names
        Notebook file names to copy (from :func:`notebooks_dir`).
    drop_tags
        Cells with any of these tags are not copied.
    overwrite
        Replace notebooks that already exist in ``dest`` (by default an
        existing notebook is kept: it may hold the user's own work).

    Returns
    -------
    list of Path
        The notebooks in ``dest``, in the order of ``names``.
    """
    src_dir = notebooks_dir()
    dest_dir = Path(dest)
    dest_dir.mkdir(parents=True, exist_ok=True)
    written = []
    drop = tuple(drop_tags)
    for name in names:
        target = dest_dir / name
        if target.exists() and not overwrite:
            logger.info("keeping the existing %s", target)
        else:
            nb = json.loads((src_dir / name).read_text(encoding="utf-8"))
            text = json.dumps(_strip_notebook(nb, drop), indent=1, ensure_ascii=False)
            target.write_text(text + "\n", encoding="utf-8")
            logger.info("wrote %s", target)
        written.append(target)
    return written


# --------------------------------------------------------------------------
# Ports and processes.


def _require_module(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        msg = (
            f"{package} is not installed; install it with "
            f"pip install '{_PROG}[app]' (or pip install {package})"
        )
        raise LaunchError(msg)


def _http_port_arg(text: str) -> int:
    """``argparse`` type of ``--http-port``: an integer in 0..65535 (0 picks a free port)."""
    return port_arg(text, allow_zero=True)


def _ip_arg(text: str) -> str:
    """``argparse`` type of ``--ip``: an IPv4 or IPv6 address, or a host name that resolves."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if text and not all(c.isdigit() or c == "." for c in text):
        with contextlib.suppress(OSError, UnicodeError):
            socket.getaddrinfo(text, None)
            return text
    msg = f"{text!r} is neither an IP address nor a host name (e.g. 127.0.0.1, 0.0.0.0)"
    raise argparse.ArgumentTypeError(msg)


def _check_udp_address(group: str, port: int) -> None:
    """Fail before the server starts if a monitor could not listen on ``group:port``.

    A receiver is bound (and joins a multicast group) for a moment, as the
    dashboard's monitor will: an address that is not this machine's, a port
    that another receiver holds, a group that cannot be joined fail here, in
    one line, instead of in the dashboard's kernel.
    """
    from .sock import MulticastReceiver

    try:
        receiver = MulticastReceiver(group=group, port=port, rcvbuf=None)
    except (OSError, ValueError) as exc:
        # The receiver's messages name the address and what to do.
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LaunchError(reason) from None
    receiver.close()


def _check_port_free(ip: str, port: int) -> int:
    """Return ``port`` if a server could listen on it; 0 picks a free one."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Jupyter servers set SO_REUSEADDR too: only a listening socket blocks.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError as exc:
            msg = f"cannot listen on {ip}:{port} ({exc.strerror}); choose another --http-port"
            raise LaunchError(msg) from None
        return int(sock.getsockname()[1])


def _wait_for_port(ip: str, port: int, proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until something accepts TCP connections on ``ip:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=1.0):
            return True
        time.sleep(0.2)
    return False


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, from /proc; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has already exited
        return None
    return int(fields[1]), int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """Map pid -> start time for every live descendant of ``root`` (Linux only)."""
    parents: dict[int, tuple[int, int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                stat = _proc_stat(int(entry.name))
                if stat is not None:
                    parents[int(entry.name)] = stat
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


def _alive(pids: dict[int, int]) -> dict[int, int]:
    """The processes of ``pids`` that still run (same pid and start time)."""
    alive = {}
    for pid, start in pids.items():
        stat = _proc_stat(pid)
        if stat is not None and stat[1] == start:
            alive[pid] = start
    return alive


def _die_with_parent_hook() -> Callable[[], None] | None:
    """Linux: a pre-exec hook that makes the kernel SIGTERM the child when we die.

    ``prctl`` is looked up here, in the parent, so that the hook run between
    fork and exec only makes one C call (no import, no dlopen).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigterm = int(signal.SIGTERM)

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)

    return hook


class _ServerProcess:
    """A server child in its own process group, stopped with its descendants."""

    def __init__(self, cmd: Sequence[str], *, env: dict[str, str], cwd: Path, log: Path) -> None:
        # The server's output, and its kernels' (they inherit it), goes to the
        # log file: the terminal shows only our own lines, among them the one
        # URL to open (Jupyter's own URL lines have a masked token).
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - our own argument list
                list(cmd),
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Even a launcher killed with SIGKILL takes its server (which then
                # shuts its kernels down) with it.
                preexec_fn=_die_with_parent_hook(),  # noqa: PLW1509
            )
        self.known: dict[int, int] = {}

    def last_log_line(self) -> str:
        """The last non-empty line of the server's log ("" if none)."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def remember_descendants(self) -> None:
        """Note the kernels and helpers the server started, to reap them later."""
        self.known.update(_descendants(self.proc.pid))

    def stop(self, timeout: float = _STOP_TIMEOUT_S) -> int:
        """Stop the server (SIGTERM, then SIGKILL) and every process it started."""
        self.remember_descendants()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("the server did not stop within %.0f s: killing it", timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Whatever is left of the group (helpers that ignored SIGTERM).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        # Kernels run in sessions of their own: the server shuts them down on
        # SIGTERM; any it left behind are killed here.
        leftovers = _alive(self.known)
        for pid in leftovers:
            logger.warning("killing process %d left behind by the server", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while _alive(leftovers) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.proc.returncode


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def _new_log_file(name: str) -> Path:
    """A new, private log file for a server, in the temporary folder (kept after exit)."""
    fd, path = tempfile.mkstemp(prefix=f"{_PROG}-{name}-", suffix=".log")
    os.close(fd)
    return Path(path)


def _run_server(
    cmd: Sequence[str],
    *,
    ip: str,
    port: int,
    url: str,
    cwd: Path,
    env: dict[str, str],
    what: str,
    prog: str,
) -> int:
    """Run a server until it exits or we get SIGINT/SIGTERM/SIGHUP; return an exit code."""
    stop_signal: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stop_signal.append(signum)

    handled = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGHUP"):
        handled.append(signal.SIGHUP)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    server = None
    try:
        logger.debug("starting %s", " ".join(cmd))
        log = _new_log_file(what.lower())
        server = _ServerProcess(cmd, env=env, cwd=cwd, log=log)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        ready = False
        while not stop_signal and time.monotonic() < deadline:
            if _wait_for_port(ip, port, server.proc, timeout=0.5):
                ready = True
                break
            if server.proc.poll() is not None:
                break
        if stop_signal:
            return 0
        if not ready:
            code = server.proc.poll()
            reason = f"exited with status {code}" if code is not None else "did not answer in time"
            last = server.last_log_line()
            emit(f"{prog}: error: {what} {reason}{f': {last}' if last else ''} (its log: {log})", file=sys.stderr)
            return 1
        emit(f"{what} is running (its log: {log}); open this URL (Ctrl-C stops it):")
        emit(url)
        while not stop_signal:
            server.remember_descendants()
            try:
                code = server.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                continue
            emit(f"{prog}: error: {what} exited with status {code} (its log: {log})", file=sys.stderr)
            return code or 1
        emit(f"stopping {what}...", file=sys.stderr)
        return 0
    finally:
        if server is not None:
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _host_for_url(ip: str) -> str:
    if ip in ("", "0.0.0.0", "::"):  # noqa: S104 - only for display
        return socket.gethostname()
    return f"[{ip}]" if ":" in ip else ip


# --------------------------------------------------------------------------
# demo


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``astropix-nbmonitor demo`` to ``parser``."""
    parser.add_argument(
        "--http-port",
        type=_http_port_arg,
        default=DEFAULT_DEMO_HTTP_PORT,
        help=f"port of the JupyterLab server (default {DEFAULT_DEMO_HTTP_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--ip",
        type=_ip_arg,
        default="127.0.0.1",
        help="address the JupyterLab server listens on (default 127.0.0.1)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="folder to copy the example notebooks to and keep (default: a temporary "
        "folder removed on exit); notebooks already there are kept",
    )
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="only copy the notebooks to --dir and print the folder, do not start JupyterLab",
    )


def run_demo(args: argparse.Namespace) -> int:
    """Start JupyterLab on a fresh copy of the quickstart notebook.

    Returns the process exit code: 0 after a clean stop on Ctrl-C/SIGTERM,
    non-zero (with one line on stderr) if JupyterLab is missing, the port is
    taken or the server fails.
    """
    if args.prepare_only:
        if args.dir is None:
            emit(f"{_PROG} demo: error: --prepare-only needs --dir", file=sys.stderr)
            return 2
        prepare_notebooks(args.dir)
        emit(Path(args.dir).resolve())
        return 0
    try:
        _require_module("jupyterlab", "jupyterlab")
        notebooks_dir()
        port = _check_port_free(args.ip, args.http_port)
    except (LaunchError, FileNotFoundError) as exc:
        emit(f"{_PROG} demo: error: {exc}", file=sys.stderr)
        return 1
    with contextlib.ExitStack() as stack:
        if args.dir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="astropix-demo-")))
        else:
            workdir = Path(args.dir).resolve()
        prepare_notebooks(workdir)
        token = secrets.token_hex(24)
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--ip={args.ip}",
            f"--port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={workdir}",
            NO_OFFLINE_BUFFER,
        ]
        if _is_root():
            cmd.append("--allow-root")
        url = f"http://{_host_for_url(args.ip)}:{port}/lab/tree/{DEMO_NOTEBOOKS[0]}?token={token}"
        emit(f"notebooks in {workdir}")
        return _run_server(
            cmd, ip=args.ip, port=port, url=url, cwd=workdir, env=_child_env(), what="JupyterLab", prog=f"{_PROG} demo"
        )
    return 1  # pragma: no cover - the with block always returns


# --------------------------------------------------------------------------
# serve


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``astropix-nbmonitor serve`` to ``parser``."""
    parser.add_argument(
        "--group",
        type=group_arg,
        default=DEFAULT_GROUP,
        help=f"UDP address to monitor: {DEFAULT_GROUP} (loopback) or a multicast group "
        f"(default {DEFAULT_GROUP})",
    )
    parser.add_argument(
        "--port", type=port_arg, default=DEFAULT_UDP_PORT, help=f"UDP port (default {DEFAULT_UDP_PORT})"
    )
    parser.add_argument(
        "--http-port",
        type=_http_port_arg,
        default=DEFAULT_SERVE_HTTP_PORT,
        help=f"port of the Voila server (default {DEFAULT_SERVE_HTTP_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--ip",
        type=_ip_arg,
        default="127.0.0.1",
        help="address the Voila server listens on (default 127.0.0.1; 0.0.0.0 for a screen "
        "on another host)",
    )
    parser.add_argument(
        "--theme", choices=("light", "dark"), default="light", help="Voila theme (default light)"
    )
    parser.add_argument(
        "--hub",
        metavar="URL",
        default=None,
        help="attach every page to this monitor hub (astropix-nbmonitor hub) instead of starting "
        "serve's own hub on --group/--port",
    )
    parser.add_argument(
        "--hub-token",
        metavar="TOKEN",
        default=None,
        help="the hub's command token: the pages' Start/Stop/Reset then act on the hub (without it they are read-only)",
    )


def _free_tcp_pair(ip: str = "127.0.0.1") -> int:
    """A TCP port p such that p and p + 1 are free on ``ip`` (a hub's publish and command ports)."""
    for _ in range(50):
        first = _check_port_free(ip, 0)
        try:
            _check_port_free(ip, first + 1)
        except LaunchError:
            continue
        return first
    msg = f"found no two consecutive free TCP ports on {ip}"
    raise LaunchError(msg)


def _start_own_hub(group: str, port: int, cwd: Path) -> tuple[_ServerProcess, str, str]:
    """Start ``astropix-nbmonitor hub`` on ``group:port`` publishing on loopback; return it, its URL and token.

    The pages' kernels attach to it, so none of them binds the UDP port: a
    page that is reloaded, closed or crashes never leaves the port held.
    """
    tcp = _free_tcp_pair()
    publish = f"tcp://127.0.0.1:{tcp}"
    token = secrets.token_urlsafe(24)
    cmd = [
        sys.executable, "-m", "astropix_nbmonitor.cli", "hub",
        "--group", group, "--port", str(port), "--publish", publish,
        f"--token={token}",  # one word: a token_urlsafe may begin with "-"
    ]  # fmt: skip
    log = _new_log_file("hub")
    hub = _ServerProcess(cmd, env=_child_env(), cwd=cwd, log=log)
    if not _wait_for_port("127.0.0.1", tcp, hub.proc, timeout=_HUB_READY_TIMEOUT_S):
        last = hub.last_log_line()
        hub.stop()
        msg = f"the hub did not start{f': {last}' if last else ''} (its log: {log})"
        raise LaunchError(msg)
    return hub, publish, token


def run_serve(args: argparse.Namespace) -> int:
    """Serve the monitor of ``args.group:args.port`` as a Voila dashboard.

    Returns the process exit code, as :func:`run_demo` does.
    """
    try:
        _require_module("voila", "voila")
        notebook = dashboard_path()
        if not notebook.is_file():
            msg = f"the dashboard notebook {notebook} is missing from the installation"
            raise LaunchError(msg)
        if args.hub is None:
            _check_udp_address(args.group, args.port)
        port = _check_port_free(args.ip, args.http_port)
    except LaunchError as exc:
        emit(f"{_PROG} serve: error: {exc}", file=sys.stderr)
        return 1
    token = secrets.token_hex(24)
    with tempfile.TemporaryDirectory(prefix="astropix-serve-") as workdir:
        own_hub = None
        try:
            if args.hub is None:
                own_hub, hub_url, hub_token = _start_own_hub(args.group, args.port, Path(workdir))
                emit(f"receiving UDP {args.group}:{args.port} in a hub publishing on {hub_url}")
            else:
                hub_url, hub_token = args.hub, args.hub_token or ""
                emit(f"pages attach to the hub {hub_url}" + ("" if hub_token else " (read-only: no --hub-token)"))
        except LaunchError as exc:
            emit(f"{_PROG} serve: error: {exc}", file=sys.stderr)
            return 1
        try:
            return _serve_pages(args, port, token, Path(workdir), notebook, hub_url, hub_token)
        finally:
            if own_hub is not None:
                own_hub.stop()


def _serve_pages(
    args: argparse.Namespace, port: int, token: str, workdir: Path, notebook: Path, hub_url: str, hub_token: str
) -> int:
    """Run Voila on the dashboard notebook, its pages attached to ``hub_url``, until stopped."""
    # Voila renders a copy: nothing is ever written next to the package.
    shutil.copy2(notebook, Path(workdir) / DASHBOARD_NOTEBOOK)
    cmd = [
        sys.executable,
        "-m",
        "voila",
        DASHBOARD_NOTEBOOK,
        "--no-browser",
        f"--Voila.ip={args.ip}",
        f"--port={port}",
        "--Voila.port_retries=0",
        f"--token={token}",
        f"--theme={args.theme}",
        # Voila shuts down the kernel of a page that is closed or reloaded
        # through a beacon that its pages send without an XSRF cookie
        # (Voila 0.5): without this, every reload would leave a kernel
        # behind (attached to the hub, or holding the UDP port of a page
        # that monitors it directly).
        "--Voila.tornado_settings=disable_check_xsrf=True",
        # Voila's kernel manager is jupyter_server's: it buffers likewise
        # for a page that went away without closing (a laptop asleep).
        NO_OFFLINE_BUFFER,
    ]
    url = f"http://{_host_for_url(args.ip)}:{port}/?token={token}"
    extra = {HUB_ENV: hub_url, HUB_TOKEN_ENV: hub_token}
    if args.hub is None:  # serve's own hub: the pages can say what it receives
        extra.update({GROUP_ENV: args.group, PORT_ENV: str(args.port)})
    env = _child_env(extra)
    for name in (GROUP_ENV, PORT_ENV) if args.hub is not None else ():
        env.pop(name, None)
    return _run_server(
        cmd, ip=args.ip, port=port, url=url, cwd=Path(workdir), env=env, what="Voila", prog=f"{_PROG} serve"
    )


# --------------------------------------------------------------------------
# Used by the dashboard notebook.


def start_when_free(monitor: Any, *, timeout: float = 15.0, **start_kwargs: Any) -> Any:
    """Start ``monitor``, waiting up to ``timeout`` s for its UDP port to be free.

    When a dashboard page is reloaded, Voila runs the notebook in a new
    kernel while it is still shutting down the previous page's kernel, whose
    monitor holds the port for a moment longer.

    Returns the monitor; raises the monitor's ``AddressInUseError`` if the
    port is still taken after ``timeout`` (another monitor listens there).
    """
    from .sock import AddressInUseError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return monitor.start(**start_kwargs)
        except AddressInUseError:
            if time.monotonic() >= deadline:
                raise
            logger.info("%s:%d is busy; retrying", *monitor.address())
            time.sleep(0.25)
