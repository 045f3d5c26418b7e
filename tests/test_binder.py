"""binder/: the environment mybinder.org builds, rebuilt here in a fresh venv.

repo2docker, on mybinder.org, installs ``binder/requirements.txt`` from the
repository's root, then runs ``binder/postBuild``, then starts JupyterLab.
This test does the same with a new virtual environment (no system site
packages, pip's usual cache reused) and a copy of the repository, then runs
the quickstart notebook in that environment and checks that the server opens
on the demo's quickstart.

It needs the package index (PyPI) for anything pip's cache lacks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from _jupyter_env import MARK_VAR, free_tcp_port, isolated_env, kill_marked_processes, wait_no_marked_processes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis", "build", "dist",
    "test-artifacts", ".ipynb_checkpoints", "demo", "*.apx",
)


def _copy_repository(dest: Path) -> None:
    """Copy the project as a clone would have it: files tracked or not ignored by git."""
    listed = None
    if (ROOT / ".git").exists() and shutil.which("git"):
        result = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=False  # noqa: S607
        )
        if result.returncode == 0:
            listed = [p for p in result.stdout.decode().split("\0") if p]
    if not listed:
        shutil.copytree(ROOT, dest, ignore=IGNORE)
        return
    for rel in listed:
        src = ROOT / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def _pip_cache_dir() -> str | None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _run(cmd: list[str], *, env: dict[str, str], cwd: Path, timeout: float, log: Path) -> None:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        result = subprocess.run(  # noqa: S603 - our own command lines
            cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({result.returncode}):\n{log.read_text()[-6000:]}")


def test_binder_environment_runs_the_quickstart(tmp_path):
    repo = tmp_path / "repo"
    _copy_repository(repo)
    assert (repo / "binder" / "requirements.txt").is_file()
    log = tmp_path / "binder.log"
    venv = tmp_path / "venv"
    bin_dir = venv / "bin"

    env = isolated_env(tmp_path / "state")
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_USER", "PIP_REQUIRE_VIRTUALENV"):
        env.pop(var, None)
    cache = _pip_cache_dir()
    if cache:
        env["PIP_CACHE_DIR"] = cache  # isolated_env moved XDG_CACHE_HOME: keep pip's own cache
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    try:
        t0 = time.monotonic()
        _run([sys.executable, "-m", "venv", str(venv)], env=env, cwd=tmp_path, timeout=120, log=log)
        # What repo2docker does: install the requirements from the repository's root...
        _run(
            [str(bin_dir / "python"), "-m", "pip", "install", "-r", "binder/requirements.txt"],
            env=env, cwd=repo, timeout=600, log=log,
        )
        # ...then run postBuild.
        _run(["bash", "binder/postBuild"], env=env, cwd=repo, timeout=120, log=log)
        t_install = time.monotonic() - t0

        # The installed package (not the copy's sources) ships the notebooks.
        probe = subprocess.run(
            [str(bin_dir / "python"), "-c", "import astropix_nbmonitor.app as a; print(a.notebooks_dir())"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True,
        )
        assert Path(probe.stdout.strip()).parent.name == "astropix_nbmonitor", probe.stdout
        assert str(venv) in probe.stdout
        demo = json.loads((repo / "demo" / "quickstart.ipynb").read_text(encoding="utf-8"))
        assert not any("cleanup" in c.get("metadata", {}).get("tags", []) for c in demo["cells"])

        # The quickstart runs in that environment, start to end.
        out_dir = tmp_path / "executed"
        _run(
            [
                str(bin_dir / "jupyter"), "nbconvert", "--to", "notebook", "--execute",
                "--ExecutePreprocessor.timeout=120", "--output-dir", str(out_dir),
                "notebooks/quickstart.ipynb",
            ],
            env=env, cwd=repo, timeout=300, log=log,
        )
        executed = json.loads((out_dir / "quickstart.ipynb").read_text(encoding="utf-8"))
        outputs = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
        assert not [o for o in outputs if o["output_type"] == "error"]
        text = "".join("".join(o.get("text", "")) for o in outputs if o["output_type"] == "stream")
        assert "data flowing: True" in text

        # The server opens on the demo's quickstart (postBuild's default URL).
        port, token = free_tcp_port(), "binder-test-token"
        server_log = log.open("ab")
        server = subprocess.Popen(  # noqa: S603
            [
                str(bin_dir / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0",
                *(["--allow-root"] if os.geteuid() == 0 else []),
            ],
            env=env, cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=server_log, start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 90
            final = None
            while final is None and time.monotonic() < deadline:
                assert server.poll() is None, log.read_text()[-4000:]
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/?token={token}", timeout=10) as resp:  # noqa: S310
                        final = urllib.parse.urlsplit(resp.geturl()).path
                except OSError:
                    time.sleep(0.3)
            assert final == "/lab/tree/demo/quickstart.ipynb"
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
            server_log.close()
        print(f"binder environment built in {t_install:.0f} s")
        assert wait_no_marked_processes(env[MARK_VAR]) == []
    finally:
        kill_marked_processes(env[MARK_VAR])
