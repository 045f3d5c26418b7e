"""The monitor hub (issue 11): wire format, publisher, viewer engine, the ``hub`` command.

Everything a viewer shows must equal the truth of the stream the hub
received (lost, malformed and split-hit readouts included), whether it
attached before the stream, after it, in this process or in another one;
malformed messages and commands are counted and never stop a thread;
commands act only with the token.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from _jupyter_env import free_tcp_pair, free_udp_port
from conftest import offline_tot_counts, send_paced, wait_for

zmq = pytest.importorskip("zmq")

from astropix_nbmonitor import hub as hubmod  # noqa: E402
from astropix_nbmonitor.engine import MonitorEngine  # noqa: E402
from astropix_nbmonitor.hist import TOT_EDGES  # noqa: E402
from astropix_nbmonitor.hub import (  # noqa: E402
    HubAddressInUseError,
    HubCommandError,
    HubEngine,
    HubInfo,
    HubMessageError,
    HubPublisher,
    HubState,
    decode_history,
    decode_records,
    decode_state,
    describe_hub_exposure,
    encode_records,
    encode_state,
    request_command,
)
from astropix_nbmonitor.sim import AstroPix4Simulator  # noqa: E402
from astropix_nbmonitor.status import STATUS_TABLE  # noqa: E402

HUB_PY = Path(hubmod.__file__)
_HUB_THREADS = ("astropix-hub-publisher", "astropix-hub-viewer-listener", "astropix-hub-viewer-refresh")
#: The faults of the streams: lost readouts, split hits, out-of-matrix hits and empty readouts
#: (no damaged readout, so that the truth is exact).
_FAULTS = {"split": 0.05, "skip_ids": 0.01, "out_of_matrix": 0.01, "empty": 0.02}
#: Datagrams that are not readout records: each is one malformed datagram for the hub.
_JUNK = (b"junk", b"\xfe\xdc\xba" + b"\x00" * 10, b"\x00" * 40)


def _hub_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in _HUB_THREADS]


def _stream(seed: int, n: int) -> tuple[object, list[bytes], int]:
    """A simulated run and the datagrams to send: its records with junk datagrams between them."""
    run = AstroPix4Simulator(seed=seed, hits_per_readout=2.0, faults=_FAULTS).generate(n)
    datagrams: list[bytes] = []
    junk = 0
    for k, record in enumerate(run.records):
        if k % 250 == 100:
            datagrams.append(_JUNK[junk % len(_JUNK)])
            junk += 1
        datagrams.append(record)
    return run, datagrams, junk


def _truth_hit_map(run) -> np.ndarray:
    """Hits per (column, row) inside the 16 x 35 matrix, from the run's truth."""
    truth = run.truth
    inside = (truth["column"] < 16) & (truth["row"] < 35)
    counts = np.zeros((16, 35), dtype=np.int64)
    np.add.at(counts, (truth["column"][inside].astype(int), truth["row"][inside].astype(int)), 1)
    return counts


def _assert_equals_truth(status, hit_map, tot_flow, run, junk: int) -> None:
    assert status["readouts"] == run.num_readouts
    assert status["hits"] == len(run.truth)
    assert status["lost"] == run.lost > 0
    assert status["malformed"] == junk > 0
    assert status["recovered_hits"] == run.num_split > 0
    assert status["out_of_matrix"] == run.num_out_of_matrix > 0
    assert status["empty_readouts"] == run.num_empty > 0
    assert np.array_equal(np.asarray(hit_map), _truth_hit_map(run))
    assert np.array_equal(np.asarray(tot_flow), offline_tot_counts(run.truth["tot_us"], TOT_EDGES))


def _replayed_engine(seed: int = 3, n: int = 1500) -> tuple[MonitorEngine, object, int]:
    run, datagrams, junk = _stream(seed, n)
    engine = MonitorEngine(port=0)
    engine.replay(datagrams)
    return engine, run, junk


def _info(identity: str = "abc") -> HubInfo:
    return HubInfo(identity, 1.0, ("127.0.0.1", 5007), "loopback", "tcp://127.0.0.1:5557", "tcp://127.0.0.1:5558", 0.5)


@pytest.fixture
def hub():
    """A stopped-at-the-end engine on a free UDP port, publishing on a free TCP port every 0.1 s."""
    engine = MonitorEngine(port=0, refresh_interval=0.1).start()
    publisher = HubPublisher(engine, "tcp://127.0.0.1:0", refresh_interval=0.1).start()
    try:
        yield engine, publisher
    finally:
        publisher.stop()
        engine.stop()
    assert _hub_threads() == []


@contextlib.contextmanager
def _viewer(*args, **kwargs):
    kwargs.setdefault("refresh_interval", 0.1)
    viewer = HubEngine(*args, **kwargs).start()
    try:
        yield viewer
    finally:
        viewer.close()
    assert not viewer.running


# --------------------------------------------------------------------------
# Wire format
# --------------------------------------------------------------------------


def test_a_state_message_round_trips_every_histogram_and_counter():
    engine, run, junk = _replayed_engine()
    state = engine.state()
    frames = encode_state(state, _info(), 7)
    assert frames[0] == b"state" and all(isinstance(f, bytes) for f in frames)
    got = decode_state(frames, received_at=123.0)
    assert isinstance(got, HubState)
    assert set(got.histograms) == set(state.histograms) == {"hit_map", "tot_hist", "chip_hit_map", "chip_tot_hist"}
    for name, hist in state.histograms.items():
        assert got.histograms[name] == hist, name
    assert got.status.as_dict() == state.status.as_dict()
    assert [row.bad for row in got.status.rows] == [row.bad for row in state.status.rows]
    assert got.seq == 7 and got.time == state.time and got.running == state.running
    assert got.chips == state.chips and np.array_equal(got.rates, state.rates)
    assert got.hub == _info() and got.received_at == 123.0
    # The EngineState methods views use.
    for chip in (None, *state.chips):
        assert np.array_equal(got.hit_counts(chip), state.hit_counts(chip))
        assert got.chip_hit_map(chip) == state.chip_hit_map(chip)
        assert got.chip_tot_hist(chip) == state.chip_tot_hist(chip)
    counts, under, over = got.tot_counts()
    assert np.array_equal(counts, state.tot_counts()[0]) and (under, over) == state.tot_counts()[1:]
    assert np.array_equal(got.tot_edges, state.tot_edges)
    _assert_equals_truth(got.status, got.hit_map.values(), got.tot_hist.values(flow=True), run, junk)


def test_one_chips_state_message_is_under_100_kB():
    engine, _, _ = _replayed_engine(n=3000)
    assert len(engine.state().chips) == 1
    size = sum(map(len, encode_state(engine.state(), _info(), 1)))
    assert size < 100_000


def test_record_batches_round_trip():
    records = [b"", b"a", b"\x00" * 19, bytes(range(256)) * 3]
    header, got = decode_records(encode_records(records, "abc", 5))
    assert got == records
    assert header == {"schema": 1, "kind": "records", "hub": "abc", "seq": 5, "count": 4}
    assert decode_records(encode_records([], "abc", 6))[1] == []


def _header_edit(edit):
    """A state-message mutation that edits the parsed header."""

    def mutate(frames):
        header = json.loads(frames[1])
        edit(header)
        return [frames[0], json.dumps(header).encode(), *frames[2:]]

    return mutate


def _frames_edit(edit):
    def mutate(frames):
        frames = list(frames)
        edit(frames)
        return frames

    return mutate


def _set(path, value):
    def edit(header):
        node = header
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _delete(path):
    def edit(header):
        node = header
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


_BAD_STATES = {
    "not JSON": _frames_edit(lambda f: f.__setitem__(1, b"{not json")),
    "not UTF-8": _frames_edit(lambda f: f.__setitem__(1, b"\xff\xfe")),
    "a JSON list": _frames_edit(lambda f: f.__setitem__(1, b"[1, 2]")),
    "deep nesting": _frames_edit(lambda f: f.__setitem__(1, b"[" * 100_000 + b"]" * 100_000)),
    "wrong topic": _frames_edit(lambda f: f.__setitem__(0, b"stat")),
    "one frame": lambda f: f[:1],
    "unknown schema": _header_edit(_set(["schema"], 2)),
    "wrong kind": _header_edit(_set(["kind"], "records")),
    "seq a string": _header_edit(_set(["seq"], "1")),
    "seq a bool": _header_edit(_set(["seq"], True)),
    "time not finite": _header_edit(_set(["time"], float("nan"))),
    "chips not ints": _header_edit(_set(["chips"], ["a"])),
    "status value a list": _header_edit(_set(["status", "lost"], [1])),
    "hub address bad": _header_edit(_set(["hub", "address"], ["127.0.0.1"])),
    "hub refresh 0": _header_edit(_set(["hub", "refresh_interval"], 0)),
    "missing tot_hist": _header_edit(_delete(["histograms", "tot_hist"])),
    "frame ref out of range": _header_edit(_set(["rates", "frame"], 99)),
    "frame ref to the header": _header_edit(_set(["rates", "frame"], 1)),
    "dtype object": _header_edit(_set(["rates", "dtype"], "|O")),
    "dtype big-endian": _header_edit(_set(["rates", "dtype"], ">f8")),
    "shape too big": _header_edit(_set(["rates", "shape"], [3, 1 << 30])),
    "shape negative": _header_edit(_set(["rates", "shape"], [3, -1])),
    "rates not (3, n)": _header_edit(_set(["rates", "shape"], [1, 0])),
    "frame one byte short": _frames_edit(lambda f: f.__setitem__(2, f[2][:-1])),
    "rows not increasing": _header_edit(_set(["histograms", "chip_hit_map", "storage", "values", "rows"], [0, 0])),
    "rows out of range": _header_edit(_set(["histograms", "chip_hit_map", "storage", "values", "rows"], [99])),
    "axis bins do not match the storage": _header_edit(_set(["histograms", "hit_map", "axes", 0, "bins"], 17)),
    "axis type unknown": _header_edit(_set(["histograms", "hit_map", "axes", 0, "type"], "exec")),
    "storage type unknown": _header_edit(_set(["histograms", "hit_map", "storage", "type"], "pickle")),
    "histogram not an object": _header_edit(_set(["histograms", "hit_map"], [1])),
}
for _key in ("hub", "seq", "time", "running", "chips", "status", "histograms", "rates"):
    _BAD_STATES[f"missing {_key}"] = _header_edit(_delete([_key]))


@pytest.fixture(scope="module")
def good_state_frames():
    engine, _, _ = _replayed_engine(n=400)
    frames = encode_state(engine.state(), _info(), 1)
    header = json.loads(frames[1])
    assert "rows" in header["histograms"]["chip_hit_map"]["storage"]["values"]  # the sparse form is exercised
    return frames


@pytest.mark.parametrize("case", sorted(_BAD_STATES))
def test_every_malformed_state_message_raises_hub_message_error(case, good_state_frames):
    bad = _BAD_STATES[case](list(good_state_frames))
    with pytest.raises(HubMessageError) as info:
        decode_state(bad)
    assert str(info.value)  # a clear message
    assert isinstance(info.value, ValueError)


def test_the_arrays_of_one_message_have_an_element_budget(good_state_frames, monkeypatch):
    # Sparse refs ("rows": []) make big arrays from small frames: the whole
    # message's arrays are bounded (MAX_MESSAGE_ELEMENTS, lowered here).
    decode_state(good_state_frames)
    monkeypatch.setattr(hubmod, "MAX_MESSAGE_ELEMENTS", 1000)
    with pytest.raises(HubMessageError, match="in all"):
        decode_state(good_state_frames)


_BAD_RECORDS = {
    "three frames": lambda f: f[:3],
    "five frames": lambda f: [*f, b""],
    "not JSON": _frames_edit(lambda f: f.__setitem__(1, b"{")),
    "unknown schema": _header_edit(_set(["schema"], 0)),
    "count negative": _header_edit(_set(["count"], -1)),
    "count too large": _header_edit(_set(["count"], 3)),
    "hub missing": _header_edit(_delete(["hub"])),
    "lengths do not sum to the data": _frames_edit(lambda f: f.__setitem__(3, f[3] + b"x")),
    "lengths frame ragged": _frames_edit(lambda f: f.__setitem__(2, f[2][:-1])),
    "wrong topic": _frames_edit(lambda f: f.__setitem__(0, b"state")),
}


@pytest.mark.parametrize("case", sorted(_BAD_RECORDS))
def test_every_malformed_record_batch_raises_hub_message_error(case):
    good = encode_records([b"abc", b"defg"], "abc", 1)
    with pytest.raises(HubMessageError):
        decode_records(_BAD_RECORDS[case](list(good)))


def test_hub_py_imports_no_pickle_marshal_or_widgets():
    tree = ast.parse(HUB_PY.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "ipywidgets", "bqplot"}
    names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    names |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert not names & {"recv_pyobj", "recv_serialized", "loads_pyobj", "eval", "exec", "object_hook"}


def test_importing_the_hub_loads_no_widget_library():
    code = "import sys, astropix_nbmonitor.hub; print([m for m in ('ipywidgets', 'bqplot') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_exposure_sentences():
    assert describe_hub_exposure("tcp://127.0.0.1:5557").startswith("loopback only (tcp://127.0.0.1:5557)")
    assert "only this machine can attach" in describe_hub_exposure("tcp://localhost:5557")
    text = describe_hub_exposure("tcp://0.0.0.0:5557")
    assert text.startswith("all interfaces") and "any host" in text and "token" in text
    assert "192.168.1.5" in describe_hub_exposure("tcp://192.168.1.5:5557")


# --------------------------------------------------------------------------
# Publisher and viewer in one process
# --------------------------------------------------------------------------


def test_a_viewer_equals_the_truth_of_a_stream_with_lost_malformed_and_split_readouts(hub):
    engine, publisher = hub
    assert publisher.publish_url.startswith("tcp://127.0.0.1:") and not publisher.publish_url.endswith(":0")
    assert publisher.command_url.startswith("tcp://127.0.0.1:") and publisher.command_url != publisher.publish_url
    assert publisher.exposure().startswith("loopback only")
    run, datagrams, junk = _stream(seed=11, n=3000)
    with _viewer(publisher.publish_url) as viewer:
        assert viewer.state().seq == 0 and viewer.status()["readouts"] == 0  # empty before the first message
        assert not viewer.connected and viewer.plot_delay is None
        wait_for(lambda: viewer.connected, what="the first state")
        send_paced(engine.port, datagrams)
        wait_for(
            lambda: viewer.num_readouts == run.num_readouts and viewer.status()["malformed"] == junk,
            what="the viewer to show the whole stream",
        )
        _assert_equals_truth(viewer.status(), viewer.hit_map().values(), viewer.tot_hist().values(flow=True), run, junk)
        assert viewer.hit_map() == engine.hit_map() and viewer.tot_hist() == engine.tot_hist()
        assert viewer.chips_seen == engine.chips_seen and viewer.out_of_matrix == engine.out_of_matrix
        assert viewer.address() == engine.address() and viewer.group == "127.0.0.1"
        assert viewer.exposure() == engine.exposure()
        wait_for(lambda: viewer.plot_delay is not None, what="a plot delay")
        assert viewer.plot_delay >= 0
        assert viewer.malformed_messages == 0 and viewer.hub_restarts == 0
        assert viewer.hub_statuses()[publisher.publish_url]["readouts"] == run.num_readouts
        assert viewer.state().hub.identity == publisher.identity
        assert viewer.events and "connected to hub" in viewer.events[0][1]


def test_a_viewer_attaching_after_the_stream_ended_is_complete_from_its_first_message(hub):
    engine, publisher = hub
    run, datagrams, junk = _stream(seed=12, n=2000)
    send_paced(engine.port, datagrams)
    wait_for(lambda: engine.num_readouts == run.num_readouts, what="the hub to process the stream")
    engine.stop()  # a stopped engine is still published
    sub = zmq.Context.instance().socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"state")
        sub.connect(publisher.publish_url)
        assert sub.poll(20_000), "no state message within 20 s"
        first = decode_state(sub.recv_multipart())
    finally:
        sub.close(linger=0)
    assert not first.running
    _assert_equals_truth(first.status, first.hit_map.values(), first.tot_hist.values(flow=True), run, junk)
    with _viewer(publisher.publish_url) as viewer:
        wait_for(lambda: viewer.connected, what="the late viewer's first state")
        _assert_equals_truth(viewer.status(), viewer.hit_map().values(), viewer.tot_hist().values(flow=True), run, junk)


def test_relayed_records_reach_process_in_order(hub):
    engine, publisher = hub
    run = AstroPix4Simulator(seed=13, faults={"skip_ids": 0.01, "split": 0.05}).generate(3000)
    seen: list[bytes] = []
    threads: set[str] = set()

    def process(records):
        seen.extend(records)
        threads.add(threading.current_thread().name)

    with _viewer(publisher.publish_url, records=True, process=process) as viewer:
        wait_for(lambda: viewer.connected, what="the viewer to subscribe")
        send_paced(engine.port, run.records)
        wait_for(lambda: len(seen) >= run.num_readouts, what="every relayed record")
        assert seen == run.records
        assert threads == {"astropix-hub-viewer-refresh"}
        assert viewer.missed_record_batches == 0 and viewer.relayed_records == run.num_readouts
        assert publisher.record_batches_published == viewer.relayed_batches


def test_relayed_records_decoded_by_the_viewer_count_its_own_hits(hub):
    engine, publisher = hub
    run = AstroPix4Simulator(seed=14, faults={"split": 0.05}).generate(1000)
    with _viewer(publisher.publish_url, records=True) as viewer:
        viewer._process_hook = viewer.process_records  # a view's process step: decode locally
        wait_for(lambda: viewer.connected, what="the viewer to subscribe")
        send_paced(engine.port, run.records)
        wait_for(lambda: viewer.local_readouts == run.num_readouts, what="the relayed records decoded")
        assert viewer.local_hits == len(run.truth)
        assert viewer.decoder.num_recovered == run.num_split
        with pytest.raises(NotImplementedError, match="replay"):
            viewer.replay(run.records)


def test_commands_need_the_token_and_act_with_it(hub):
    engine, publisher = hub
    run, datagrams, _ = _stream(seed=15, n=1000)
    send_paced(engine.port, datagrams)
    wait_for(lambda: engine.num_readouts == run.num_readouts, what="the hub to process the stream")
    url = publisher.publish_url
    with _viewer(url) as anonymous, _viewer(url, token="wrong") as wrong, _viewer(url, token=publisher.token) as owner:
        wait_for(lambda: anonymous.connected and wrong.connected and owner.connected, what="three viewers")
        assert not anonymous.has_token and owner.has_token
        with pytest.raises(PermissionError, match="token"):
            anonymous.command("reset")
        with pytest.raises(PermissionError):
            anonymous.reset()
        assert anonymous.command("ping")["hub"]["identity"] == publisher.identity  # ping needs no token
        with pytest.raises(HubCommandError, match="refused"):
            wrong.reset()
        assert request_command(anonymous.links[url].command_url, {"command": "stop"})["ok"] is False
        assert publisher.refused_commands == 2 and publisher.accepted_commands == 0
        assert engine.running and engine.num_readouts == run.num_readouts
        # With the token: stop, start, reset act on the hub.
        assert owner.stop_hub()["ok"] is True
        assert not engine.running
        wait_for(lambda: not owner.state().running, what="the viewer to see the hub stopped")
        assert owner.start_hub()["running"] is True and engine.running
        cleared = []
        owner.reset(also=lambda: cleared.append(True))
        assert cleared == [True] and engine.num_readouts == 0
        wait_for(
            lambda: anonymous.num_readouts == 0 and anonymous.hit_map().sum() == 0, what="every viewer to see the reset"
        )
        assert publisher.accepted_commands == 3 and publisher.refused_commands == 2


def test_junk_commands_are_counted_and_answered(hub):
    _, publisher = hub
    ctx = zmq.Context.instance()
    for payload in ([b"not json"], [b"[1]"], [b'{"command": 3}'], [b"a", b"b"]):
        req = ctx.socket(zmq.DEALER)
        try:
            req.setsockopt(zmq.LINGER, 0)
            req.connect(publisher.command_url)
            req.send_multipart([b"", *payload])
            assert req.poll(20_000), "no reply within 20 s"
            reply = json.loads(req.recv_multipart()[-1])
        finally:
            req.close(linger=0)
        assert reply["ok"] is False and "malformed" in reply["error"]
    assert publisher.malformed_commands == 4
    reply = request_command(publisher.command_url, {"command": "ping"})
    assert reply["ok"] and publisher.running


def test_a_viewer_fed_junk_messages_counts_them_and_keeps_running():
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:0")
    url = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    engine, run, junk = _replayed_engine(n=300)
    good = encode_state(engine.state(), _info(), 1)
    junk_messages = [
        [b"state"],
        [b"state", b"{"],
        [b"state", b"[]"],
        [b"state", good[1]],  # its array frames missing
        [b"statement", b"{}"],
        [b"records", b"{}"],
        [b"records", json.dumps({"schema": 1, "kind": "records", "hub": "x", "seq": 1, "count": 9}).encode(), b"", b""],
    ]
    try:
        with _viewer(url, records=True) as viewer:
            seq = 0

            def one_round() -> bool:
                nonlocal seq
                for message in junk_messages:
                    pub.send_multipart(message)
                seq += 1
                state = encode_state(engine.state(), _info(), seq)
                pub.send_multipart(state)
                return viewer.links[url].states_received >= 3

            wait_for(one_round, poll=0.05, what="three states through the junk")
            assert viewer.malformed_messages >= len(junk_messages)
            assert viewer.status()["readouts"] == run.num_readouts
            assert viewer.running and viewer.error_count == 0
    finally:
        pub.close(linger=0)


def test_a_viewer_of_two_hubs_sums_their_histograms_and_keeps_their_counters_apart():
    first, run1, junk1 = _replayed_engine(seed=21, n=800)
    second, run2, junk2 = _replayed_engine(seed=22, n=500)
    pub1 = HubPublisher(first, "tcp://127.0.0.1:0", refresh_interval=0.1).start()
    pub2 = HubPublisher(second, "tcp://127.0.0.1:0", refresh_interval=0.1).start()
    try:
        with _viewer([pub1.publish_url, pub2.publish_url]) as viewer:
            wait_for(lambda: viewer.connected, what="both hubs")
            assert np.array_equal(viewer.hit_map().values(), _truth_hit_map(run1) + _truth_hit_map(run2))
            status = viewer.status()
            assert status["readouts"] == run1.num_readouts + run2.num_readouts
            assert status["lost"] == run1.lost + run2.lost and status["malformed"] == junk1 + junk2
            apart = viewer.hub_statuses()
            assert apart[pub1.publish_url]["readouts"] == run1.num_readouts
            assert apart[pub2.publish_url]["readouts"] == run2.num_readouts
            assert viewer.state().hub.identity == pub1.identity
    finally:
        pub1.stop()
        pub2.stop()


def test_publisher_stop_is_safe_twice_and_a_restart_has_a_new_identity():
    engine = MonitorEngine(port=0)
    publisher = HubPublisher(engine, "tcp://127.0.0.1:0").start()
    first = publisher.identity
    publisher.stop()
    publisher.stop()
    assert _hub_threads() == []
    publisher.start()
    try:
        assert publisher.identity != first and publisher.running
    finally:
        publisher.stop()
    assert len(publisher.token) >= 24


def test_a_taken_tcp_port_raises_one_clear_error(hub):
    _, publisher = hub
    other = HubPublisher(MonitorEngine(port=0), publisher.publish_url)
    with pytest.raises(HubAddressInUseError) as info:
        other.start()
    assert isinstance(info.value, OSError) and "already in use" in str(info.value)
    assert "\n" not in str(info.value)
    assert _hub_threads() == ["astropix-hub-publisher"]  # only the running hub's


def test_status_before_any_message_is_zeros_of_the_table():
    viewer = HubEngine("tcp://127.0.0.1:9")
    status = viewer.status()
    assert list(status) == [c.name for c in STATUS_TABLE]
    assert status["readouts"] == 0 and status["last_datagram"] is None
    assert viewer.hit_map().sum() == 0 and viewer.state().hub.identity == ""
    assert viewer.group == "tcp://127.0.0.1:9" and viewer.port == 0 and viewer.listener is None
    assert not viewer.connected and viewer.seconds_since_update is None
    viewer.close()
    viewer.close()


# --------------------------------------------------------------------------
# Processes: viewers in other processes, the hub command
# --------------------------------------------------------------------------






def _hub_command(udp: int, tcp: int, token: str, refresh: float = 0.2) -> list[str]:
    return [
        sys.executable, "-m", "astropix_nbmonitor.cli", "hub", "--port", str(udp),
        "--publish", f"tcp://127.0.0.1:{tcp}", "--token", token, "--refresh", str(refresh),
    ]  # fmt: skip


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent)


def _end(proc: subprocess.Popen) -> tuple[str, str]:
    if proc.poll() is None:
        proc.kill()
    return proc.communicate(timeout=60)


def _wait_for_hub(command_url: str) -> dict:
    """Wait (a limit) until the hub answers a ping."""
    return request_command(command_url, {"command": "ping"}, timeout=60)


_VIEWER_PROCESS = textwrap.dedent(
    """
    import json, sys, time
    from astropix_nbmonitor.hub import HubEngine
    viewer = HubEngine(sys.argv[1], refresh_interval=0.1).start()
    target, malformed = int(sys.argv[2]), int(sys.argv[3])
    deadline = time.monotonic() + 120  # a limit, never a measure
    while time.monotonic() < deadline:
        status = viewer.status()
        if status["readouts"] == target and status["malformed"] == malformed:
            break
        time.sleep(0.02)
    print(json.dumps({
        "status": viewer.status().as_dict(),
        "hit_map": viewer.hit_map().values().tolist(),
        "tot": viewer.tot_hist().values(flow=True).tolist(),
        "connected": viewer.connected,
    }))
    viewer.close()
    """
)


def test_several_viewer_processes_all_equal_the_truth(hub):
    engine, publisher = hub
    run, datagrams, junk = _stream(seed=31, n=2500)
    viewers = [
        _start([sys.executable, "-c", _VIEWER_PROCESS, publisher.publish_url, str(run.num_readouts), str(junk)])
        for _ in range(3)
    ]
    try:
        send_paced(engine.port, datagrams)
        outputs = [proc.communicate(timeout=180) for proc in viewers]
    finally:
        for proc in viewers:
            _end(proc)
    for (out, err), proc in zip(outputs, viewers):
        assert proc.returncode == 0, err
        summary = json.loads(out)
        assert summary["connected"]
        _assert_equals_truth(summary["status"], summary["hit_map"], summary["tot"], run, junk)


def test_a_hub_process_killed_and_restarted_is_reconnected_to(tmp_path):
    udp, tcp = free_udp_port(), free_tcp_pair()
    cmd = _hub_command(udp, tcp, "restart-token")
    url = f"tcp://127.0.0.1:{tcp}"
    proc = _start(cmd)
    try:
        first = _wait_for_hub(f"tcp://127.0.0.1:{tcp + 1}")["hub"]["identity"]
        with _viewer(url) as viewer:
            wait_for(lambda: viewer.connected, what="the viewer to attach")
            assert viewer.state().hub.identity == first
            proc.kill()
            proc.communicate(timeout=60)
            wait_for(lambda: not viewer.connected, what="connected to fall")
            wait_for(lambda: any("not connected" in text for _, text in viewer.events), what="the viewer's event")
            proc = _start(cmd)
            wait_for(lambda: viewer.connected and viewer.hub_restarts == 1, timeout=60, what="the viewer to reconnect")
            assert viewer.state().hub.identity != first
            assert any("restarted" in text and "reconnected" in text for _, text in viewer.events)
    finally:
        _end(proc)


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


def test_the_hub_command_prints_its_endpoints_and_stops_on_sigterm():
    udp, tcp = free_udp_port(), free_tcp_pair()
    token = f"sigterm-{os.getpid()}-{tcp}"
    proc = _start(_hub_command(udp, tcp, token))
    try:
        reply = _wait_for_hub(f"tcp://127.0.0.1:{tcp + 1}")
        assert reply["hub"]["address"] == ["127.0.0.1", udp]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        _end(proc)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert f"publish tcp://127.0.0.1:{tcp}" in lines
    assert f"command tcp://127.0.0.1:{tcp + 1}" in lines
    assert f"token {token}" in lines
    assert any(line.startswith(f"receiving UDP 127.0.0.1:{udp}") for line in lines)
    assert lines[-1].startswith("hub stopped:")
    assert _processes_with(token) == []


def test_the_hub_command_with_its_tcp_port_taken_says_so_in_one_line():
    udp = free_udp_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            _hub_command(udp, port, "taken"), capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent
        )
    assert result.returncode != 0
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "already in use" in err[0] and str(port) in err[0]
    assert "token" not in result.stdout


def test_the_hub_command_with_its_udp_port_taken_says_so_in_one_line():
    tcp = free_tcp_pair()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        udp = taken.getsockname()[1]
        result = subprocess.run(
            _hub_command(udp, tcp, "taken"), capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent
        )
    assert result.returncode != 0
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "in use" in err[0]


def test_copy_of_state_frames_is_not_mutated_by_decoding(good_state_frames):
    frames = copy.deepcopy(good_state_frames)
    decode_state(frames)
    assert frames == good_state_frames


# --------------------------------------------------------------------------
# Time windows through a hub (issue 12): slices with every state, history for late joiners
# --------------------------------------------------------------------------


class _FakeClock:
    """The hub engine's wall clock, moved by the test (the windows' seconds)."""

    def __init__(self, start: float) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked_hub():
    """A running engine with a fake clock, publishing every 0.1 s."""
    clock = _FakeClock(1_000_000.3)
    engine = MonitorEngine(port=0, refresh_interval=0.1)
    engine.clock = clock
    engine.start()
    publisher = HubPublisher(engine, "tcp://127.0.0.1:0", refresh_interval=0.1).start()
    try:
        yield engine, publisher, clock
    finally:
        publisher.stop()
        engine.stop()
    assert _hub_threads() == []


def _windows_equal(viewer: HubEngine, engine: MonitorEngine, pixels=((8, 4), (12, 27), (3, 3))) -> bool:
    """The viewer's 10 s and 60 s windows, per-pixel spectra and masked counts equal the hub engine's."""
    masked = [(0, c, r) for c, r in pixels]
    for seconds in (10, 60):
        if viewer.hit_map_window(seconds) != engine.hit_map_window(seconds):
            return False
        if viewer.tot_hist_window(seconds) != engine.tot_hist_window(seconds):
            return False
        a, b = viewer.masked_tot_window(seconds, masked), engine.masked_tot_window(seconds, masked)
        if not (np.array_equal(a[0], b[0]) and a[1] and b[1]):
            return False
    return all(
        viewer.pixel_tot_hist(c, r) == engine.pixel_tot_hist(c, r)
        and viewer.pixel_tot_hist(c, r, 0, seconds=10) == engine.pixel_tot_hist(c, r, 0, seconds=10)
        for c, r in pixels
    )


def _beam_seconds(engine: MonitorEngine, clock: _FakeClock, seconds: range, center, seed: int, start_id: int) -> int:
    """One batch of a beam at ``center`` per fake second; returns the next readout id."""
    for k, _ in enumerate(seconds):
        run = AstroPix4Simulator(
            seed=seed + k, beam_center=center, beam_sigma=(1.0, 1.0), beam_fraction=1.0, start_id=start_id
        ).generate(150)
        before = engine.num_readouts
        send_paced(engine.port, run.records)
        wait_for(lambda: engine.num_readouts == before + 150, what="the hub to process the second")
        start_id += 150
        clock.now += 1.0
    return start_id


def test_viewers_windows_equal_the_hubs_from_the_start_and_when_joining_late(clocked_hub):
    engine, publisher, clock = clocked_hub
    with _viewer(publisher.publish_url) as early:
        wait_for(lambda: early.connected, what="the first state")
        next_id = _beam_seconds(engine, clock, range(12), (4.0, 8.0), seed=40, start_id=0)  # (row, column)
        _beam_seconds(engine, clock, range(13), (27.0, 12.0), seed=60, start_id=next_id)  # the beam moved
        clock.now -= 0.5
        wait_for(lambda: _windows_equal(early, engine), what="the early viewer's windows to equal the hub's")
        with _viewer(publisher.publish_url) as late:
            wait_for(lambda: late.windows_synced and _windows_equal(late, engine), what="the late viewer's windows")
            assert late.links[publisher.publish_url].histories == 1
            for viewer in (early, late):
                window = viewer.hit_map_window(10).values()
                whole = viewer.hit_map().values()
                assert window[8, 4] == 0 and whole[8, 4] > 0  # the first spot: gone from the window, kept in the run
                assert window[12, 27] == np.max(window) > 0  # the new spot
                assert viewer.hit_map_window(60) == engine.hit_map_window(60)
                assert viewer.windows.pixel_rate(12, 27, 0, 10)[1].sum() == window[12, 27]
                state = viewer.state(window=10)
                assert state.window == 10 and np.array_equal(state.hit_map.values(), window)
                assert viewer.malformed_histories == 0 and viewer.history_failures == 0 and viewer.error_count == 0
            assert early.links[publisher.publish_url].histories == 1 and early.windows_synced
    assert publisher.history_replies == 2


def test_an_idle_hub_sends_no_slices_and_a_busy_one_only_the_last_seconds(clocked_hub):
    engine, publisher, clock = clocked_hub
    sub = zmq.Context.instance().socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"state")
        sub.connect(publisher.publish_url)
        assert sub.poll(20_000)
        _beam_seconds(engine, clock, range(3), (10.0, 5.0), seed=1, start_id=0)
        states = []
        while len(states) < 6:
            assert sub.poll(20_000), "no state within 20 s"
            states.append(decode_state(sub.recv_multipart()))
    finally:
        sub.close(linger=0)
    last = states[-1]
    assert last.windows is not None and last.windows.slices == ()  # idle: the block's numbers only
    assert last.windows.now == clock.now and last.windows.head == int(clock.now - 1)
    with_block = encode_state(engine.state(), _info(), 1, windows=last.windows)
    header = json.loads(with_block[1])
    assert "keys" not in header["windows"]
    assert len(with_block) == len(encode_state(engine.state(), _info(), 1)) + 1  # the TOT edges only
    assert any(s.windows.slices for s in states[:-1])  # the seconds of the stream did travel


def test_a_hub_reset_and_a_hub_restart_clear_a_viewers_windows(clocked_hub):
    engine, publisher, clock = clocked_hub
    url = publisher.publish_url
    with _viewer(url, token=publisher.token) as viewer:
        wait_for(lambda: viewer.connected, what="the first state")
        _beam_seconds(engine, clock, range(3), (10.0, 5.0), seed=2, start_id=0)
        wait_for(lambda: viewer.hit_map_window(10).sum() > 0 and _windows_equal(viewer, engine), what="the windows")
        viewer.command("reset")
        wait_for(lambda: viewer.hit_map_window(10).sum() == 0 and viewer.pixel_tots.nbytes == 0, what="a cleared window")
        _beam_seconds(engine, clock, range(2), (20.0, 3.0), seed=3, start_id=0)
        wait_for(lambda: viewer.hit_map_window(10).sum() > 0 and _windows_equal(viewer, engine), what="windows after the reset")
        # A restarted hub (a new identity, a new engine on the same endpoint): the viewer starts its windows again.
        publisher.stop()
        engine.stop()
        fresh = MonitorEngine(port=0, refresh_interval=0.1)
        fresh.clock = clock
        fresh.start()
        again = HubPublisher(fresh, url, refresh_interval=0.1).start()
        try:
            wait_for(lambda: viewer.hub_restarts == 1 and viewer.windows_synced, what="the viewer to follow the restart")
            assert viewer.hit_map_window(10).sum() == 0 and viewer.pixel_tots.pixel_counts(5, 10).sum() == 0
            _beam_seconds(fresh, clock, range(2), (30.0, 1.0), seed=4, start_id=0)
            wait_for(lambda: _windows_equal(viewer, fresh), what="the restarted hub's windows")
        finally:
            again.stop()
            fresh.stop()


def _good_history(engine: MonitorEngine) -> list[bytes]:
    publisher = HubPublisher(engine, "tcp://127.0.0.1:0")
    publisher.identity = "abc"
    return publisher._history_reply()


def _history_case(frames: list[bytes], path: tuple, value) -> list[bytes]:
    header = json.loads(frames[1])
    node = header
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return [frames[0], json.dumps(header).encode(), *frames[2:]]


def test_every_malformed_history_reply_raises_hub_message_error():
    engine = MonitorEngine(port=0)
    clock = _FakeClock(2_000_000.5)
    engine.clock = clock
    for second in range(3):
        engine.replay(AstroPix4Simulator(seed=second, start_id=100 * second).generate(100).records, refresh=False)
        clock.now += 1
    good = _good_history(engine)
    history = decode_history(good)
    assert len(history.windows.slices) == 3 and history.pixel_totals[0][0] == 0
    assert sum(int(c.sum()) for _, _, c in history.pixel_totals) == engine.pixel_tots.sum_pixels(
        [(0, c, r) for c in range(16) for r in range(35)]
    ).sum()
    header = json.loads(good[1])
    w, t = header["windows"], header["pixel_totals"]
    index_frame = w["pixel_index"]["frame"]
    cases = [
        [good[0], b"{not json", *good[2:]],
        _history_case(good, ("ok",), False),
        _history_case(good, ("windows", "num_rows"), 0),
        _history_case(good, ("windows", "head"), "x"),
        _history_case(good, ("windows", "head"), w["head"] - 5),  # slices newer than the head
        _history_case(good, ("windows", "keys", "dtype"), "<f8"),
        _history_case(good, ("windows", "maps", "shape"), [3, 559]),
        _history_case(good, ("windows", "pixel_lengths", "frame"), 999),
        _history_case(good, ("pixel_totals", "index", "dtype"), "<u4"),
        _history_case(good, ("pixel_totals", "chips", "shape"), [2]),
        _history_case(good, ("windows", "granularity"), 0),
        [*good[:index_frame], np.full(len(good[index_frame]) // 2, 65535, "<u2").tobytes(), *good[index_frame + 1 :]],
        [*good[:index_frame], good[index_frame][::-1], *good[index_frame + 1 :]],  # not increasing
        [*good[: t["count"]["frame"]], np.full(len(good[t["count"]["frame"]]) // 8, -1, "<i8").tobytes(),
         *good[t["count"]["frame"] + 1 :]],  # negative counts
        [b"state", *good[1:]],
    ]  # fmt: skip
    for k, frames in enumerate(cases):
        with pytest.raises(HubMessageError):
            decode_history(frames)
            pytest.fail(f"case {k} was accepted")


def test_a_malformed_or_oversized_history_reply_is_counted_and_refused(clocked_hub, monkeypatch):
    engine, publisher, clock = clocked_hub
    _beam_seconds(engine, clock, range(2), (10.0, 5.0), seed=5, start_id=0)
    real = publisher._history_reply
    replies = iter([
        [b"history", b"\xff not json"],
        [b"history", json.dumps({"schema": 1, "kind": "history", "ok": True, "hub": publisher.identity}).encode()],
    ])  # fmt: skip
    monkeypatch.setattr(publisher, "_history_reply", lambda: next(replies, None) or real())
    monkeypatch.setattr(hubmod, "MAX_HISTORY_ELEMENTS", 50)  # the real reply is over this budget
    with _viewer(publisher.publish_url) as viewer:
        viewer.HISTORY_RETRY_S = 0.05
        wait_for(lambda: viewer.malformed_histories >= 3, what="three refused history replies")
        assert not viewer.windows_synced and viewer.running and viewer.error_count == 0
        monkeypatch.setattr(hubmod, "MAX_HISTORY_ELEMENTS", 1 << 25)
        wait_for(lambda: viewer.windows_synced and _windows_equal(viewer, engine), what="the viewer to sync at last")
    assert publisher.running and publisher.history_replies >= 4


def test_a_window_block_round_trips_slices_with_and_without_per_pixel_counts():
    from astropix_nbmonitor.hub import WindowBlock
    from astropix_nbmonitor.windows import SecondSlice

    engine = MonitorEngine(port=0)
    clock = _FakeClock(3_000_000.2)
    engine.clock = clock
    for second in range(4):
        engine.replay(AstroPix4Simulator(seed=9 + second, start_id=50 * second, chip_ids=(0, 2)).generate(50).records, refresh=False)
        clock.now += 1
    data = engine.window_slices(None)
    slices = list(data["slices"])
    slices[1] = SecondSlice(slices[1].second, slices[1].chip, slices[1].maps, slices[1].tots)  # not kept: the map travels
    w = engine.windows
    block = WindowBlock(data["generation"], data["head"], data["now"], w.granularity, w.max_seconds, w.num_rows, w.num_cols,
                        w.tot_edges, tuple(slices))  # fmt: skip
    back = decode_state(encode_state(engine.state(), _info(), 1, windows=block)).windows
    assert back.head == data["head"] and back.now == data["now"] and back.generation == data["generation"]
    assert len(back.slices) == len(slices) == 8 and {s.chip for s in back.slices} == {0, 2}
    for sent, got in zip(slices, back.slices):
        assert (got.second, got.chip, got.complete) == (sent.second, sent.chip, sent.complete)
        assert np.array_equal(got.maps, sent.maps) and np.array_equal(got.tots, sent.tots)
        assert (got.pixel_index is None) == (sent.pixel_index is None)
        if sent.pixel_index is not None:
            assert np.array_equal(got.pixel_index, sent.pixel_index) and np.array_equal(got.pixel_count, sent.pixel_count)
    assert not back.slices[-1].complete and back.slices[0].complete


def test_a_viewer_that_lost_a_state_asks_for_the_history_again(clocked_hub):
    engine, publisher, clock = clocked_hub
    viewer = HubEngine(publisher.publish_url)  # not started: the test hands it the states, and loses one
    link = viewer.links[publisher.publish_url]
    sub = zmq.Context.instance().socket(zmq.SUB)

    def next_state() -> list[bytes]:
        assert sub.poll(20_000), "no state within 20 s"
        return sub.recv_multipart()

    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"state")
        sub.connect(publisher.publish_url)
        viewer._handle(link, next_state())
        assert link.histories == 1 and viewer.windows_synced
        _beam_seconds(engine, clock, range(3), (10.0, 5.0), seed=6, start_id=0)
        while not decode_state(lost := next_state()).windows.slices:
            viewer._handle(link, lost)
        assert not _windows_equal(viewer, engine)  # the lost state had slots the viewer does not have
        viewer._handle(link, next_state())  # the next one shows the gap: the history is asked again
        assert link.window_resyncs == 1 and link.histories == 2 and viewer.windows_synced
        assert _windows_equal(viewer, engine)
        assert viewer.missed_updates >= 1
    finally:
        sub.close(linger=0)
        viewer.close()
