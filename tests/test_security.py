"""Security: who can send to a monitor, and what network and file input can make it do.

* the defaults bind loopback only; a multicast monitor says on its dashboard
  that it is open to the network;
* no network or file input reaches pickle, eval or a shell (checked on the
  package's source code);
* a length field claiming gigabytes allocates nothing (datagram, record, file);
* .apx headers are parsed as JSON and nothing else.
"""

from __future__ import annotations

import ast
import errno
import inspect
import json
import os
import pickle
import random
import socket
import struct
import time
import tracemalloc
import warnings
from pathlib import Path

import pytest

import astropix_nbmonitor
from conftest import wait_for as _wait_for
from astropix_nbmonitor import app, cli
from astropix_nbmonitor.fileio import ApxFormatError, ApxTruncatedWarning, apx_open
from astropix_nbmonitor.fmt import AstroPix4Readout, MalformedReadoutError, decode_batch, parse_record
from astropix_nbmonitor.listener import Listener
from astropix_nbmonitor.monitor import AbstractMonitor, AstroPix4SimpleMonitor
from astropix_nbmonitor.sim import AstroPix4Simulator
from astropix_nbmonitor.sock import AddressInUseError, MulticastReceiver, MulticastSender, describe_exposure

PACKAGE_DIR = Path(astropix_nbmonitor.__file__).parent
README = Path(__file__).resolve().parents[1] / "README.md"
HUGE = 2**32 - 1


def _record_claiming(length: int, data: bytes = b"\xbc" * 16, readout_id: int = 0) -> bytes:
    """A record whose length field says ``length`` whatever follows."""
    return struct.pack("<3sIQI", b"\xfe\xdc\xba", readout_id, 0, length) + data




def _own_non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, only a route is chosen
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


# --------------------------------------------------------------------------
# Binding


@pytest.mark.parametrize("target", [AbstractMonitor, AstroPix4SimpleMonitor, Listener, MulticastReceiver, MulticastSender])
def test_every_entry_point_defaults_to_loopback(target) -> None:
    assert inspect.signature(target).parameters["group"].default == "127.0.0.1"


def test_command_line_defaults_to_loopback() -> None:
    parser = cli.build_parser()
    for command in ("send", "simulate", "record"):
        args = parser.parse_args([command, "x.apx"] if command in ("send", "record") else [command])
        assert args.group == "127.0.0.1", command
    for command in ("demo", "serve"):
        args = parser.parse_args([command])
        assert args.ip == "127.0.0.1", f"{command}: the Jupyter server must listen on loopback by default"
        if command == "serve":
            assert args.group == "127.0.0.1"
    assert app.DEFAULT_GROUP == "127.0.0.1"


def test_default_monitor_socket_is_bound_to_loopback_and_says_so(no_leaks) -> None:
    mon = AstroPix4SimpleMonitor(port=0).start()
    try:
        assert mon.engine.listener._receiver.socket.getsockname()[0] == "127.0.0.1"
        dashboard = mon._dashboard_html()
        assert "loopback only (127.0.0.1): only this machine can send" in dashboard
        # Datagrams to another address of this machine do not reach it.
        other = _own_non_loopback_address()
        if other is not None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.sendto(AstroPix4Simulator(seed=1).generate(1).records[0], (other, mon.port))
                except OSError:
                    other = None
        with MulticastSender("127.0.0.1", mon.port) as tx:
            tx.send_data(AstroPix4Simulator(seed=2).generate(1).records[0])
        _wait_for(lambda: mon.listener_stats().datagrams >= 1, what="the loopback datagram")
        time.sleep(0.2)
        assert mon.listener_stats().datagrams == 1, "a datagram sent to a non-loopback address was received"
    finally:
        mon.close()


def test_multicast_monitor_states_that_it_is_open_to_the_network(no_leaks) -> None:
    group = f"239.255.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
    mon = AstroPix4SimpleMonitor(group=group, port=0)
    try:
        try:
            mon.start()
        except OSError as exc:
            pytest.skip(f"cannot join multicast group {group} here: {exc}")
        text = mon._dashboard_html()
        assert f"multicast group {group}" in text
        assert "open to the network, any host that reaches the group can send to this monitor" in text
        receiver = mon.engine.listener._receiver
        if receiver.bound_to == group:
            # Bound to the group address: unicast datagrams to the port stay out.
            with MulticastSender("127.0.0.1", mon.port) as tx:
                tx.send_data(AstroPix4Simulator(seed=3).generate(1).records[0])
            time.sleep(0.3)
            assert mon.listener_stats().datagrams == 0
            assert "unicast datagrams to the port are ignored" in text
        else:
            assert receiver.bound_to == ""
            assert "the socket is bound to all interfaces" in text
    finally:
        mon.close()


class _StubSocket:
    """Stands for a socket whose bind to a multicast address fails with ``errno_for_group``."""

    def __init__(self, errno_for_group: int) -> None:
        self.errno_for_group = errno_for_group
        self.calls: list[tuple[str, int]] = []

    def bind(self, address: tuple[str, int]) -> None:
        self.calls.append(address)
        if address[0]:
            raise OSError(self.errno_for_group, os.strerror(self.errno_for_group))


def _bare_receiver(group: str) -> MulticastReceiver:
    receiver = object.__new__(MulticastReceiver)
    receiver.group, receiver.multicast, receiver.interface = group, True, "0.0.0.0"
    return receiver


def test_where_the_group_address_cannot_be_bound_every_interface_is_and_the_dashboard_says_so() -> None:
    receiver = _bare_receiver("239.1.2.3")
    stub = _StubSocket(errno.EADDRNOTAVAIL)
    receiver.bound_to = receiver._bind(stub, 5007)
    assert stub.calls == [("239.1.2.3", 5007), ("", 5007)]
    assert receiver.bound_to == ""
    assert "the socket is bound to all interfaces" in receiver.exposure()
    # A port taken by another program is an error, not a reason to bind wider.
    with pytest.raises(AddressInUseError):
        _bare_receiver("239.1.2.3")._bind(_StubSocket(errno.EADDRINUSE), 5007)


def test_exposure_sentences() -> None:
    assert describe_exposure("127.0.0.1").startswith("loopback only")
    assert describe_exposure("localhost").startswith("loopback only")
    assert "open to the network" in describe_exposure("239.1.1.1")
    assert "interface 10.0.0.2" in describe_exposure("239.1.1.1", "10.0.0.2")
    assert "bound to all interfaces, so unicast datagrams" in describe_exposure("239.1.1.1", all_interfaces=True)
    assert "bound to the group address" in describe_exposure("239.1.1.1")
    assert describe_exposure("10.0.0.2").startswith("bound to 10.0.0.2: any host")
    assert describe_exposure("0.0.0.0").startswith("bound to all interfaces (0.0.0.0): any host")


def test_readme_states_who_can_send() -> None:
    text = README.read_text()
    assert "## Security" in text
    section = text.split("## Security", 1)[1].split("\n## ", 1)[0]
    for phrase in ("loopback", "all interfaces", "multicast", "pickle", "JSON"):
        assert phrase in section, f"the README's security section does not mention {phrase!r}"


# --------------------------------------------------------------------------
# No pickle, eval or shell


def _package_sources() -> list[Path]:
    paths = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(paths) >= 10
    return paths


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
FORBIDDEN_CALLS = {
    "eval", "exec", "compile", "__import__", "os.system", "os.popen", "os.execl", "os.execv",
    "os.execvp", "os.spawnl", "os.spawnv", "pty.spawn", "commands.getoutput", "subprocess.getoutput",
    "subprocess.getstatusoutput", "yaml.load", "numpy.load", "np.load",
}  # fmt: skip


def _risky_constructs(source: str, filename: str) -> list[str]:
    """Imports of pickle-like modules, eval/exec/shell calls, and json hooks in ``source``."""
    problems = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            problems += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            problems.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in FORBIDDEN_CALLS:
                problems.append(f"{where} calls {name}")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    problems.append(f"{where} calls {name} with shell={ast.unparse(kw.value)}")
                if name.endswith(("json.loads", "json.load")) and kw.arg in ("object_hook", "object_pairs_hook", "cls"):
                    problems.append(f"{where} gives json a {kw.arg}")
            command_line = (ast.Constant, ast.JoinedStr, ast.BinOp)  # a string, an f-string, a concatenation
            if name.startswith("subprocess.") and node.args and isinstance(node.args[0], command_line):
                problems.append(f"{where} passes {ast.unparse(node.args[0])} to {name}: a command line string")
    return problems


def test_no_pickle_eval_or_shell_in_the_package() -> None:
    problems = []
    for path in _package_sources():
        problems += _risky_constructs(path.read_text(), path.name)
    assert problems == []


def test_the_scan_finds_what_it_looks_for() -> None:
    # The scanner is not blind: each construct it looks for is reported.
    bad = (
        "import pickle\n"
        "from marshal import loads\n"
        "import subprocess, json, os\n"
        "eval(data)\n"
        "os.system(cmd)\n"
        "subprocess.run(['ls'], shell=True)\n"
        "subprocess.Popen(f'ls {x}')\n"
        "json.loads(text, object_hook=f)\n"
    )
    found = _risky_constructs(bad, "bad.py")
    assert found == [
        "bad.py:1 imports pickle",
        "bad.py:2 imports from marshal",
        "bad.py:4 calls eval",
        "bad.py:5 calls os.system",
        "bad.py:6 calls subprocess.run with shell=True",
        "bad.py:7 passes f'ls {x}' to subprocess.Popen: a command line string",
        "bad.py:8 gives json a object_hook",
    ]


# --------------------------------------------------------------------------
# Huge length fields allocate nothing


def _peak_of(fn) -> tuple[object, int]:
    """Run ``fn`` under tracemalloc; return its result and the peak traced bytes."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.parametrize("length", [HUGE, 2**31, 10**9])
def test_a_record_claiming_a_huge_length_is_refused_without_allocating(length: int) -> None:
    record = _record_claiming(length)

    def parse() -> str:
        with pytest.raises(MalformedReadoutError) as info:
            AstroPix4Readout.from_bytes(record)
        with pytest.raises(MalformedReadoutError):
            parse_record(record)
        return info.value.reason

    reason, peak = _peak_of(parse)
    assert reason == "length"
    assert peak < 1_000_000

    good = AstroPix4Simulator(seed=5).generate(20)
    stream = [*good.records[:10], record, *good.records[10:]]
    hits, peak = _peak_of(lambda: decode_batch(stream))
    assert len(hits) == len(decode_batch(good.records))
    assert peak < 2_000_000


def test_huge_length_datagrams_are_counted_and_allocate_nothing(no_leaks) -> None:
    mon = AstroPix4SimpleMonitor(port=0).start(refresh_interval=0.05)
    try:
        good = AstroPix4Simulator(seed=6).generate(50)

        def flood() -> None:
            with MulticastSender("127.0.0.1", mon.port) as tx:
                for i in range(2000):
                    tx.send_data(_record_claiming(HUGE - i, b"\xbc" * (i % 64)))
                    if i % 100 == 99:
                        time.sleep(0.001)
                for record in good.records:
                    tx.send_data(record)
            _wait_for(lambda: mon.listener_stats().datagrams >= 2050, what="every datagram")
            _wait_for(lambda: mon.num_readouts >= 50, what="the good readouts")

        _, peak = _peak_of(flood)
        stats = mon.listener_stats()
        assert stats.malformed_by_reason["length"] == 2000
        assert stats.accepted == 50
        assert peak < 8_000_000, f"{peak} bytes traced while receiving 2000 datagrams that claim 4 GB"
        assert mon.hit_map.values().sum() == len(decode_batch(good.records))
    finally:
        mon.close()


def test_an_apx_record_claiming_a_huge_length_reads_as_a_truncated_file(tmp_path) -> None:
    good = AstroPix4Simulator(seed=7).generate(30).records
    header = json.dumps({"readout_uid": 4000}).encode()
    path = tmp_path / "huge.apx"
    path.write_bytes(b"%APXDF" + struct.pack("<I", len(header)) + header + b"".join(good) + _record_claiming(HUGE, b"\xbc" * 100))

    def read() -> tuple[list[bytes], int]:
        with warnings.catch_warnings(record=True) as caught, apx_open(path) as reader:
            warnings.simplefilter("always")
            records = list(reader.records())
        assert any(issubclass(w.category, ApxTruncatedWarning) for w in caught)
        return records, reader.truncated_bytes

    (records, truncated), peak = _peak_of(read)
    assert records == list(good)
    assert truncated == 19 + 100
    assert peak < 16_000_000, f"{peak} bytes traced reading a record that claims 4 GB"


def test_an_apx_header_claiming_a_huge_length_is_refused(tmp_path) -> None:
    path = tmp_path / "header.apx"
    path.write_bytes(b"%APXDF" + struct.pack("<I", HUGE) + b"{}")
    _, peak = _peak_of(lambda: pytest.raises(ApxFormatError, apx_open, path))
    assert peak < 1_000_000


# --------------------------------------------------------------------------
# .apx headers: JSON only

_UNPICKLED: list[str] = []


def _mark_unpickled(what: str) -> str:
    _UNPICKLED.append(what)
    return what


class _Payload:
    """Unpickling this calls :func:`_mark_unpickled`: a stand-in for arbitrary code."""

    def __reduce__(self):
        return (_mark_unpickled, ("header payload ran",))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_an_apx_header_holding_a_pickle_is_refused_and_never_run(tmp_path, protocol: int) -> None:
    payload = pickle.dumps(_Payload(), protocol=protocol)
    assert pickle.loads(payload) == "header payload ran"  # the payload does run when unpickled...
    _UNPICKLED.clear()
    path = tmp_path / "pickled.apx"
    path.write_bytes(b"%APXDF" + struct.pack("<I", len(payload)) + payload)
    with pytest.raises(ApxFormatError, match="not UTF-8 JSON|not an object"):
        apx_open(path)
    assert _UNPICKLED == []  # ...but not when the file is opened


def test_an_apx_header_is_plain_data(tmp_path) -> None:
    # Keys that object-restoring JSON dialects act on are just strings here.
    header = {
        "readout_uid": 4000,
        "py/object": "os.system",
        "__class__": "subprocess.Popen",
        "$type": "System.Diagnostics.Process",
        "args": "rm -rf /",
    }
    raw = json.dumps(header).encode()
    path = tmp_path / "dialect.apx"
    path.write_bytes(b"%APXDF" + struct.pack("<I", len(raw)) + raw)
    with apx_open(path) as reader:
        assert reader.header == header
        assert all(type(v) in (int, str) for v in reader.header.values())
