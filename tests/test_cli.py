"""Tests of the astropix-nbmonitor command line: send, simulate, record, errors, signals."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_for

from astropix_nbmonitor import cli
from astropix_nbmonitor.cli import COMMANDS, Command, build_parser, main, parse_faults
from astropix_nbmonitor.fileio import apx_open
from astropix_nbmonitor.fmt import AstroPix4Readout
from astropix_nbmonitor.listener import Listener
from astropix_nbmonitor.sock import LOCAL_HOST, MulticastReceiver, MulticastSender

pytestmark = pytest.mark.timeout(120)

REAL_APX = "20250723_092534_data.apx"
DEADLINE = 30.0  # a limit only: tests never assert on timing


@pytest.fixture(autouse=True)
def _leak_check(no_leaks):
    """Every test here leaves no thread and no socket behind (conftest's no_leaks)."""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL_HOST, 0))
        return s.getsockname()[1]


def ids_of(records) -> list[int]:
    return [struct.unpack_from("<I", r, 3)[0] for r in records]


def read_records(path: Path) -> tuple[dict, list[bytes]]:
    with apx_open(path) as reader:
        return reader.header, list(reader.records())


class Recorder:
    """``astropix-nbmonitor record`` run in-process on a thread."""

    def __init__(self, out: Path, port: int, *extra: str) -> None:
        self.argv = ["record", str(out), "--port", str(port), "--duration", str(DEADLINE), *extra]
        self.rc: int | None = None
        before = {t for t in threading.enumerate() if t.name == "astropix-listener"}
        self.thread = threading.Thread(target=self._run, name="test-record")
        self.thread.start()
        deadline = time.monotonic() + DEADLINE
        # The listener thread starts once the socket is bound.
        while not ({t for t in threading.enumerate() if t.name == "astropix-listener"} - before):
            if not self.thread.is_alive() or time.monotonic() > deadline:
                pytest.fail(f"record did not start listening (exit code {self.rc})")
            time.sleep(0.005)

    def _run(self) -> None:
        self.rc = main(self.argv)

    def join(self) -> int | None:
        self.thread.join(DEADLINE + 10)
        assert not self.thread.is_alive()
        return self.rc


@pytest.fixture
def real_apx(shared_data_dir) -> Path:
    path = shared_data_dir / REAL_APX
    if not path.is_file():
        pytest.skip(f"real data file {path} not found")
    return path


# --------------------------------------------------------------------------
# send and record


def test_send_then_record_round_trips_a_file(tmp_path, real_apx, capsys):
    _, original = read_records(real_apx)
    out = tmp_path / "copy.apx"
    port = free_udp_port()
    recorder = Recorder(out, port, "--count", str(len(original)))
    assert main(["send", str(real_apx), "--port", str(port), "--rate", "20000"]) == 0
    assert recorder.join() == 0
    header, copy = read_records(out)
    assert copy == original  # readout for readout, byte for byte
    assert header["readout_uid"] == 4000
    assert header["group"] == LOCAL_HOST and header["port"] == port
    assert "start_time" in header
    text = capsys.readouterr().out
    assert f"sent {len(original)} readouts" in text
    assert f"recorded {len(original)} readouts" in text
    assert "lost 0, out of order 0, restarts 0, dropped 0, malformed 0" in text
    # The collaboration's way of reading: magic, header length, JSON, records.
    raw = out.read_bytes()
    assert raw[:6] == b"%APXDF"
    (length,) = struct.unpack_from("<I", raw, 6)
    assert json.loads(raw[10 : 10 + length])["readout_uid"] == 4000


def test_send_loop_renumbers_ids(tmp_path, real_apx, capsys):
    _, original = read_records(real_apx)
    n = 2 * len(original) + 100
    out = tmp_path / "loop.apx"
    port = free_udp_port()
    recorder = Recorder(out, port, "--count", str(n))
    rc = main(["send", str(real_apx), "--port", str(port), "--rate", "20000", "--loop", "--count", str(n)])
    assert rc == 0
    assert recorder.join() == 0
    _, copy = read_records(out)
    first = ids_of(original)[0]
    assert ids_of(copy) == list(range(first, first + n))  # consecutive across the loops
    for k, record in enumerate(copy):
        source = original[k % len(original)]
        assert record[:3] == source[:3] and record[7:] == source[7:]
    text = capsys.readouterr().out
    assert f"sent {n} readouts" in text and "3 passes" in text
    assert "lost 0" in text


def test_simulate_then_record(tmp_path, capsys):
    out = tmp_path / "sim.apx"
    port = free_udp_port()
    n = 600
    recorder = Recorder(out, port, "--count", str(n))
    rc = main(
        ["simulate", "--port", str(port), "--rate", "20000", "--count", str(n), "--seed", "5", "--faults", "skip_ids=0.05"]
    )
    assert rc == 0
    assert recorder.join() == 0
    _, records = read_records(out)
    assert len(records) == n
    ids = ids_of(records)
    assert ids == sorted(ids) and ids[0] == 0
    gaps = ids[-1] - ids[0] + 1 - n
    assert gaps > 0  # skip_ids at 5% over 600 readouts
    readouts = [AstroPix4Readout.from_bytes(r) for r in records]
    assert sum(len(r.decode()) for r in readouts) > 0
    text = capsys.readouterr().out
    assert f"sent {n} readouts" in text and "seed 5" in text
    assert f"recorded {n} readouts" in text and f"lost {gaps}," in text


def test_simulate_for_a_duration(capsys):
    port = free_udp_port()
    assert main(["simulate", "--port", str(port), "--duration", "0.2", "--rate", "500"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sent ") and "readouts/s" in out


def test_record_duration_with_nothing_received(tmp_path, capsys):
    out = tmp_path / "empty.apx"
    assert main(["record", str(out), "--port", str(free_udp_port()), "--duration", "0.2"]) == 0
    header, records = read_records(out)
    assert records == [] and header["readout_uid"] == 4000
    assert "recorded 0 readouts" in capsys.readouterr().out


def test_record_counts_malformed_and_lost(tmp_path, capsys):
    out = tmp_path / "bad.apx"
    port = free_udp_port()
    recorder = Recorder(out, port, "--count", "5")
    with MulticastSender(LOCAL_HOST, port) as tx:
        tx.send_data(b"\x00" * 5)
        for rid in (0, 1, 4, 5, 6):
            tx.send_readout(AstroPix4Readout(b"\xbc\xbc", rid, 1))
    assert recorder.join() == 0
    _, records = read_records(out)
    assert ids_of(records) == [0, 1, 4, 5, 6]
    text = capsys.readouterr().out
    assert "recorded 5 readouts" in text and "lost 2," in text and "malformed 1 (short 1)" in text


# --------------------------------------------------------------------------
# The command table


def test_help_for_every_command(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in ("send", "simulate", "record"):
        assert name in text
        assert main([name, "--help"]) == 0
        sub = capsys.readouterr().out
        assert "--group" in sub and "--port" in sub


def test_commands_table_is_extensible(capsys):
    ran = []

    def add(parser):
        parser.add_argument("--answer", type=int, default=42)

    def run(args):
        ran.append((args.answer, args.group, args.port))
        return 3

    commands = [*COMMANDS, Command("extra", "a test command", add, run)]
    parser = build_parser(commands)
    args = parser.parse_args(["extra", "--answer", "7"])
    assert args.run(args) == 3 and ran == [(7, "127.0.0.1", 5007)]
    # "module:function" entries whose module is missing are left out
    missing = Command("ghost", "not here", "astropix_nbmonitor._no_such_module:add", "astropix_nbmonitor._no_such_module:run")
    parser = build_parser([missing])
    with pytest.raises(SystemExit):
        parser.parse_args(["ghost"])
    capsys.readouterr()


def test_app_commands_registered_when_present():
    try:
        import astropix_nbmonitor.app  # noqa: F401
    except ImportError:
        pytest.skip("astropix_nbmonitor.app is not importable here")
    parser = build_parser()
    for name in ("demo", "serve"):
        args = parser.parse_args([name])
        assert callable(args.run)


def test_parse_faults():
    assert parse_faults("split=0.01, skip_ids=0.001") == {"split": 0.01, "skip_ids": 0.001}
    assert parse_faults("") == {}
    for bad in ("split", "split=x", "split=2", "=0.1"):
        with pytest.raises(ValueError, match="fault"):
            parse_faults(bad)


def test_renumbering_wraps():
    record = AstroPix4Readout(b"\xbc", 2**32 - 1, 5).to_bytes()
    (out,) = cli._renumbered([record], 2)
    assert ids_of([out]) == [1] and out[7:] == record[7:]


# --------------------------------------------------------------------------
# Errors: one line on stderr, non-zero exit, no traceback (as subprocesses)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "astropix_nbmonitor.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> None:
    assert proc.returncode != 0, proc
    if code is not None:
        assert proc.returncode == code, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_errors_are_one_line(tmp_path):
    not_apx = tmp_path / "junk.apx"
    not_apx.write_bytes(b"this is not an apx file at all")
    existing = tmp_path / "exists.apx"
    existing.write_bytes(b"")
    cases = [
        (("send", str(tmp_path / "missing.apx")), ("missing.apx", "no such file"), 1),
        (("send", str(tmp_path / "data.txt")), ("data.txt", ".apx"), 2),
        (("send", str(not_apx)), ("junk.apx", "not an .apx file"), 1),
        (("send", str(not_apx), "--rate", "fast"), ("fast",), 2),
        (("send", str(not_apx), "--port", "70000"), ("70000",), 2),
        (("send", str(not_apx), "--group", "not-an-address.invalid"), ("not-an-address.invalid",), 2),
        (("record", str(tmp_path / "x.apx"), "--group", "203.0.113.7"), ("203.0.113.7", "not an address of this machine"), 1),
        (("record", str(existing), "--duration", "1"), ("exists.apx", "--force"), 1),
        (("record", str(tmp_path / "no" / "such" / "dir.apx")), ("no such folder",), 1),
        (("record", str(tmp_path / "x.apx"), "--count", "0"), ("--count",), 2),
        (("simulate", "--faults", "bogus=0.1", "--count", "1"), ("bogus",), 2),
        (("simulate", "--faults", "split"), ("split",), 2),
        (("nonsense",), ("nonsense",), 2),
        ((), ("command",), 2),
    ]
    for args, needles, code in cases:
        assert_one_line_error(run_cli(*args), *needles, code=code)


def test_port_in_use_is_one_line(tmp_path):
    with MulticastReceiver(port=0) as holder:
        proc = run_cli("record", str(tmp_path / "x.apx"), "--port", str(holder.port), "--duration", "1")
        assert_one_line_error(proc, f"127.0.0.1:{holder.port}", "already in use", code=1)
    assert not (tmp_path / "x.apx").exists()


# --------------------------------------------------------------------------
# Signals


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "astropix_nbmonitor.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _interrupt(proc: subprocess.Popen, signum: int) -> str:
    """Send ``signum``, wait, check a clean exit with no traceback; return stdout."""
    try:
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "(interrupted)" in stdout
    return stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_record_stops_cleanly_on_signal(tmp_path, signum):
    out = tmp_path / "sig.apx"
    port = free_udp_port()
    proc = _start("record", str(out), "--port", str(port))
    try:
        line = proc.stderr.readline()  # "recording ... (Ctrl-C to stop)": it is listening
        assert "recording" in line, line
        sent = [AstroPix4Readout(b"\xbc\xbc", i, i).to_bytes() for i in range(50)]
        with MulticastSender(LOCAL_HOST, port) as tx:
            tx.send_records(sent)
        time.sleep(0.3)  # let it receive them (not asserted on)
    finally:
        stdout = _interrupt(proc, signum)
    assert "recorded" in stdout
    _, records = read_records(out)
    assert records == sent[: len(records)]
    assert f"recorded {len(records)} readouts" in stdout


def test_send_loop_stops_cleanly_on_signal(real_apx):
    port = free_udp_port()
    with MulticastReceiver(port=port, timeout=DEADLINE) as rx:
        proc = _start("send", str(real_apx), "--port", str(port), "--loop", "--rate", "2000")
        try:
            rx.receive()  # it is sending
        finally:
            stdout = _interrupt(proc, signal.SIGTERM)
    assert stdout.startswith("sent ")


def _sent_count(summary: str) -> int:
    match = re.match(r"sent (\d+) readouts", summary)
    assert match, summary
    return int(match.group(1))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("command", ["simulate", "send"])
def test_interrupted_sender_reports_the_readouts_it_sent(request, command, signum):
    # The summary of an interrupted send/simulate counts every readout that went
    # out: exactly what a receiver on the port got (0 was printed before).
    listener = Listener(port=0).start()
    try:
        if command == "send":  # one pass of the real file at 300/s: interrupted in mid-pass
            args = ("send", str(request.getfixturevalue("real_apx")), "--rate", "300")
        else:
            args = ("simulate", "--rate", "2000", "--seed", "3")
        proc = _start(*args, "--port", str(listener.port))
        try:
            wait_for(lambda: listener.stats().datagrams > 0, DEADLINE, "the first datagram")
        finally:
            stdout = _interrupt(proc, signum)
        sent = _sent_count(stdout)
        # The sender has exited: every datagram it sent is already in the socket's buffer.
        wait_for(lambda: listener.stats().datagrams >= sent, DEADLINE, f"{sent} datagrams")
        received = listener.stats().datagrams
    finally:
        listener.stop()
    assert sent > 0
    assert received == sent, stdout


# --------------------------------------------------------------------------
# watch

#: Runs the command line, then says on stderr which widget libraries were imported.
_IMPORT_CHECK = (
    "import sys; from astropix_nbmonitor.cli import main; rc = main(); "
    "print('widget modules:', sorted(m for m in ('ipywidgets', 'bqplot') if m in sys.modules), file=sys.stderr); "
    "sys.exit(rc)"
)


def _readouts_in(line: str) -> int:
    match = re.search(r"(\d[\d,]*) readouts\b", line)
    assert match, line
    return int(match.group(1).replace(",", ""))


def test_watch_prints_rising_counts_and_stops_cleanly_on_ctrl_c():
    port = free_udp_port()
    watch = subprocess.Popen(
        [sys.executable, "-c", _IMPORT_CHECK, "watch", "--port", str(port), "--refresh", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    feeder = None
    try:
        assert "watching UDP 127.0.0.1:" in watch.stderr.readline()  # bound: a sender may start
        feeder = _start("simulate", "--port", str(port), "--rate", "2000")
        counts: list[int] = []
        while len(counts) < 3:  # three lines with data, each with more readouts than the one before
            line = watch.stdout.readline()
            assert line, "watch ended early"
            n = _readouts_in(line)
            if n > 0 and (not counts or n > counts[-1]):
                counts.append(n)
        watch.send_signal(signal.SIGINT)
        stdout, stderr = watch.communicate(timeout=DEADLINE)
    finally:
        for proc in (watch, feeder):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=DEADLINE)
    assert watch.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "widget modules: []" in stderr  # no ipywidgets, no bqplot
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("stopped: ") and _readouts_in(last) >= counts[-1]


def _read_pty(fd: int, until, proc: subprocess.Popen) -> bytes:
    """Read the terminal's output until ``until(output)`` holds (or the child ends)."""
    out = b""
    deadline = time.monotonic() + DEADLINE
    while not until(out) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
        elif proc.poll() is not None:
            break
    return out


@pytest.mark.parametrize(
    ("lines", "signum"), [(False, signal.SIGINT), (True, signal.SIGTERM)], ids=["table-SIGINT", "--lines-SIGTERM"]
)
def test_watch_on_a_terminal_redraws_the_table_in_place(lines, signum):
    port = free_udp_port()
    master, slave = os.openpty()
    extra = ["--lines"] if lines else []
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "astropix_nbmonitor.cli", "watch", "--port", str(port), "--refresh", "0.1", *extra],
            stdout=slave,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(slave)
        slave = -1
        try:
            out = _read_pty(master, lambda o: o.count(b"hits/s") >= 3, proc)
        finally:
            proc.send_signal(signum)
            _, stderr = proc.communicate(timeout=DEADLINE)
        out += _read_pty(master, lambda o: b"stopped:" in o, proc)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert proc.returncode == 0, stderr
    text = out.decode()
    if lines:
        assert "\x1b[" not in text
        assert len([line for line in text.splitlines() if " readouts, " in line]) >= 3
    else:
        assert "readouts processed" in text and "lost readouts" in text  # the table, labelled
        redraws = re.findall(r"\x1b\[(\d+)F", text)
        assert len(redraws) >= 2 and len(set(redraws)) == 1  # moved up over the same block each time


def test_watch_on_a_port_in_use_is_one_line():
    with MulticastReceiver(port=0) as holder:
        proc = run_cli("watch", "--port", str(holder.port))
    assert_one_line_error(proc, f"127.0.0.1:{holder.port}", "already in use", code=1)
