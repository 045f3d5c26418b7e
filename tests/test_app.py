"""The ``demo`` and ``serve`` launchers (astropix_nbmonitor.app).

The server tests run the real command (``astropix-nbmonitor demo|serve``) as
a child process, read the URL line it prints, talk HTTP to the server, then
stop it with SIGTERM or SIGINT and check that nothing it started (server,
kernels) is left: every process of the run carries a marker variable in its
environment, and no process with that marker may survive.
"""

from __future__ import annotations

import argparse
import errno
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from astropix_nbmonitor import app, cli
from astropix_nbmonitor.sock import MulticastReceiver
from _jupyter_env import (
    MARK_VAR,
    cli_command,
    free_tcp_port,
    free_udp_port,
    isolated_env,
    marked_processes,
    wait_no_marked_processes,
)

pytestmark = pytest.mark.timeout(180)


def _get(url: str, timeout: float = 60.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URL
        return resp.status, resp.read().decode("utf-8", "replace")


def _post(url: str, body: dict, timeout: float = 60.0) -> tuple[int, dict]:
    req = urllib.request.Request(  # noqa: S310 - loopback URL
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
        return resp.status, json.loads(resp.read())


def _udp_port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE
            return True
        return False


def _poll(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())




def _server_log(cmd) -> Path:
    """The server's log file, named on the launcher's "is running" line."""
    line = next(line for line in cmd.lines if "its log: " in line)
    return Path(line.split("its log: ", 1)[1].split(")", 1)[0])


def _assert_one_url_line(cmd, url: str, server: str) -> None:
    """Our URL is the only URL the terminal shows; the server's own URL lines are in its log."""
    terminal = [*cmd.lines, *cmd.rest_of_stdout(), *cmd.log_path.read_text(errors="replace").splitlines()]
    assert [line for line in terminal if "http://" in line or "token=" in line] == [url], terminal
    log = _server_log(cmd).read_text(encoding="utf-8", errors="replace")
    assert server in log and "http://" in log  # what the server printed went to its log


# --------------------------------------------------------------------------
# Without a server.


def test_prepare_notebooks_drops_cleanup_cells_and_outputs(tmp_path):
    written = app.prepare_notebooks(tmp_path)
    assert [p.name for p in written] == list(app.DEMO_NOTEBOOKS)
    for path in written:
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            assert app.CLEANUP_TAG not in cell.get("metadata", {}).get("tags", [])
            if cell["cell_type"] == "code":
                assert cell["outputs"] == []
                assert cell["execution_count"] is None
        assert "widgets" not in nb["metadata"]
    # The originals do have a cleanup cell: the copy is what differs.
    original = json.loads((app.notebooks_dir() / "quickstart.ipynb").read_text(encoding="utf-8"))
    tags = [t for c in original["cells"] for t in c.get("metadata", {}).get("tags", [])]
    assert app.CLEANUP_TAG in tags


def test_prepare_notebooks_keeps_existing_work(tmp_path):
    (tmp_path / "quickstart.ipynb").write_text("mine", encoding="utf-8")
    app.prepare_notebooks(tmp_path)
    assert (tmp_path / "quickstart.ipynb").read_text(encoding="utf-8") == "mine"
    app.prepare_notebooks(tmp_path, overwrite=True)
    assert json.loads((tmp_path / "quickstart.ipynb").read_text(encoding="utf-8"))["cells"]


def test_dashboard_notebook_reads_its_address_from_the_environment():
    nb = json.loads(app.dashboard_path().read_text(encoding="utf-8"))
    source = "".join("".join(c["source"]) for c in nb["cells"])
    assert app.GROUP_ENV in source
    assert app.PORT_ENV in source
    assert "AstroPix4SimpleMonitor" in source


def test_demo_prepare_only_needs_dir(capsys):
    parser = argparse.ArgumentParser()
    app.add_demo_arguments(parser)
    assert app.run_demo(parser.parse_args(["--prepare-only"])) == 2
    assert "--dir" in capsys.readouterr().err


def test_demo_prepare_only_prints_the_folder(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    app.add_demo_arguments(parser)
    assert app.run_demo(parser.parse_args(["--prepare-only", "--dir", str(tmp_path / "demo")])) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "demo").resolve())
    assert (tmp_path / "demo" / "quickstart.ipynb").is_file()


@pytest.mark.parametrize(
    ("command", "module"), [("demo", "jupyterlab"), ("serve", "voila")], ids=["demo", "serve"]
)
def test_missing_server_package_is_one_clear_line(monkeypatch, capsys, command, module):
    real_find_spec = app.importlib.util.find_spec
    monkeypatch.setattr(
        app.importlib.util, "find_spec", lambda name, *a: None if name == module else real_find_spec(name, *a)
    )
    parser = argparse.ArgumentParser()
    (app.add_demo_arguments if command == "demo" else app.add_serve_arguments)(parser)
    args = parser.parse_args(["--http-port", "0"])
    assert (app.run_demo if command == "demo" else app.run_serve)(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{module} is not installed" in err[0]


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_port_taken_is_one_clear_line(tmp_path, command):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(  # noqa: S603
            cli_command(command, "--http-port", str(port)),
            env=isolated_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "--http-port" in lines[0]
    assert not any(line.startswith("http") for line in result.stdout.splitlines())


def _never_start_a_server(*args, **kwargs):
    pytest.fail("a server was started despite an invalid option")


@pytest.mark.parametrize(
    ("argv", "needle", "code"),
    [
        (("serve", "--group", "300.1.1.1"), "300.1.1.1", 2),
        (("serve", "--group", "not-an-address.invalid"), "not-an-address.invalid", 2),
        (("serve", "--group", "203.0.113.7"), "not an address of this machine", 1),
        (("serve", "--port", "70000"), "70000", 2),
        (("serve", "--port", "0"), "--port", 2),
        (("serve", "--port", "udp"), "udp", 2),
        (("serve", "--http-port", "70000"), "70000", 2),
        (("serve", "--ip", "300.1.1.1"), "300.1.1.1", 2),
        (("demo", "--http-port", "-1"), "--http-port", 2),
        (("demo", "--http-port", "http"), "http", 2),
        (("demo", "--ip", "300.1.1.1"), "300.1.1.1", 2),
    ],
)
def test_invalid_address_options_are_one_line_before_any_server(monkeypatch, capsys, argv, needle, code):
    monkeypatch.setattr(app, "_run_server", _never_start_a_server)
    assert cli.main(list(argv)) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert needle in lines[0] and "Traceback" not in captured.err
    assert not any(line.startswith("http") for line in captured.out.splitlines())


def test_serve_on_a_udp_port_in_use_is_one_line_before_any_server(monkeypatch, capsys):
    monkeypatch.setattr(app, "_run_server", _never_start_a_server)
    with MulticastReceiver(port=0) as holder:
        assert cli.main(["serve", "--port", str(holder.port), "--http-port", "0"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert f"127.0.0.1:{holder.port}" in lines[0] and "already in use" in lines[0]


def test_serve_with_an_invalid_group_exits_before_voila(tmp_path):
    # The case of issue 10, as the user runs it: one line, non-zero, no Voila.
    result = subprocess.run(  # noqa: S603
        cli_command("serve", "--group", "300.1.1.1", "--http-port", "0"),
        env=isolated_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "300.1.1.1" in lines[0] and "--group" in lines[0]
    assert result.stdout == ""


# --------------------------------------------------------------------------
# Real servers.


@pytest.mark.slow
def test_demo_starts_jupyterlab_prints_one_url_and_stops_cleanly(launch, tmp_path):
    port = free_tcp_port()
    workdir = tmp_path / "work"
    cmd, env = launch("demo", "--http-port", str(port), "--dir", str(workdir))
    url = cmd.wait_for_url()
    parsed = urllib.parse.urlsplit(url)
    token = urllib.parse.parse_qs(parsed.query)["token"][0]
    assert parsed.netloc == f"127.0.0.1:{port}"
    assert parsed.path == "/lab/tree/quickstart.ipynb"
    assert len(token) >= 32

    status, page = _get(url)
    assert status == 200
    assert "JupyterLab" in page
    # The server's root is the demo folder, holding the prepared quickstart.
    api = f"http://127.0.0.1:{port}/api"
    status, body = _get(f"{api}/contents/quickstart.ipynb?token={token}")
    assert status == 200
    assert json.loads(body)["type"] == "notebook"
    # No token, no entry.
    with pytest.raises(urllib.error.HTTPError) as denied:
        _get(f"{api}/contents/quickstart.ipynb")
    assert denied.value.code == 403
    denied.value.close()
    # A kernel, as a user running the notebook would start one.
    status, kernel = _post(f"{api}/kernels?token={token}", {"name": "python3"})
    assert status == 201
    assert _poll(lambda: len(marked_processes(env[MARK_VAR])) >= 3, timeout=30)

    # Ctrl-C: the launcher stops JupyterLab and its kernel, and exits 0.
    assert cmd.stop(signal.SIGINT) == 0, cmd.log()
    _assert_one_url_line(cmd, url, "Jupyter")
    assert wait_no_marked_processes(env[MARK_VAR]) == []
    assert (workdir / "quickstart.ipynb").is_file()  # --dir is kept
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.slow
def test_demo_in_a_temporary_folder_removes_it(launch):
    cmd, env = launch("demo", "--http-port", str(free_tcp_port()))
    cmd.wait_for_url()
    folder = next(line.split(" in ", 1)[1] for line in cmd.lines if line.startswith("notebooks in "))
    assert Path(folder, "quickstart.ipynb").is_file()
    assert cmd.stop(signal.SIGTERM) == 0, cmd.log()
    assert not Path(folder).exists()
    assert wait_no_marked_processes(env[MARK_VAR]) == []


@pytest.mark.slow
def test_serve_renders_a_live_dashboard_prints_one_url_and_stops_cleanly(launch):
    http_port = free_tcp_port()
    udp_port = free_udp_port()
    cmd, env = launch("serve", "--port", str(udp_port), "--http-port", str(http_port))
    url = cmd.wait_for_url()
    parsed = urllib.parse.urlsplit(url)
    assert parsed.netloc == f"127.0.0.1:{http_port}"
    assert "token=" in parsed.query
    assert any(f"127.0.0.1:{udp_port}" in line for line in cmd.lines)

    # Voila runs the dashboard when the page is asked for.
    status, page = _get(url, timeout=120)
    assert status == 200
    assert "application/vnd.jupyter.widget-view+json" in page
    assert f"127.0.0.1:{udp_port}" in page
    assert "Traceback" not in page
    # serve's own hub listens on the UDP port it was given (the pages attach to the hub).
    assert _poll(lambda: _udp_port_in_use(udp_port), timeout=30)
    assert any(line.startswith("receiving UDP") and "in a hub publishing on tcp://127.0.0.1:" in line for line in cmd.lines)

    assert cmd.stop(signal.SIGTERM) == 0, cmd.log()
    assert wait_no_marked_processes(env[MARK_VAR]) == []
    assert not _udp_port_in_use(udp_port)
    _assert_one_url_line(cmd, url, "Voila")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_a_killed_launcher_takes_its_server_down(launch):
    cmd, env = launch("serve", "--port", str(free_udp_port()), "--http-port", str(free_tcp_port()))
    cmd.wait_for_url()
    assert len(marked_processes(env[MARK_VAR])) >= 2  # the launcher and Voila
    # SIGKILL leaves the launcher no chance to clean up: the server gets SIGTERM from the kernel.
    assert cmd.stop(signal.SIGKILL) == -signal.SIGKILL
    assert wait_no_marked_processes(env[MARK_VAR], timeout=20) == []
