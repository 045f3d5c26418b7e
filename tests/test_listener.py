"""Tests of astropix_nbmonitor.listener over loopback: exact counts, bad input, life cycle."""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import send_paced as send
from conftest import socket_inodes
from astropix_nbmonitor import listener as listener_module
from astropix_nbmonitor import record as record_module
from astropix_nbmonitor.fmt import AstroPix4Readout
from astropix_nbmonitor.record import RECORD_HEADER, MalformedReadoutError, pack_record, parse_record
from astropix_nbmonitor.listener import (
    IdTracker,
    MALFORMED_REASONS,
    RESTART_BACKWARD_JUMP,
    RESTART_FORWARD_JUMP,
    RESTART_ID_LIMIT,
    Listener,
    ListenerStats,
)
from astropix_nbmonitor.sock import LOCAL_HOST, AddressInUseError, InvalidAddressError, MulticastReceiver, MulticastSender

pytestmark = pytest.mark.timeout(120)

DEADLINE = 20.0  # a limit only: tests never assert on timing


@pytest.fixture(autouse=True)
def _leak_check(no_leaks):
    """Every test here leaves no thread and no socket behind (conftest's no_leaks)."""


@pytest.fixture
def make_listener():
    """Make listeners (port 0 by default) that are stopped at the end of the test."""
    made: list[Listener] = []

    def make(**kwargs) -> Listener:
        kwargs.setdefault("port", 0)
        listener = Listener(**kwargs)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        assert listener.stop()
        assert not listener.running


HAVE_RECVMMSG = listener_module._recvmmsg() is not None
PATHS = [
    pytest.param(False, id="recv"),
    pytest.param(True, id="recvmmsg", marks=pytest.mark.skipif(not HAVE_RECVMMSG, reason="no recvmmsg here")),
]


@pytest.fixture(params=PATHS)
def make_listener_both(request, make_listener):
    """Like make_listener, once per receive path (recv() per datagram, then recvmmsg)."""
    batch = request.param

    def make(**kwargs) -> Listener:
        listener = make_listener(batch_receive=batch, **kwargs)
        assert listener.batch_receive is batch
        return listener

    return make


def record(rid: int, hits: int = 1) -> bytes:
    data = b"\xbc\xbc" + b"\xe0\x50\x42\x03\x06\x20\xd7\x01\xbc" * hits + b"\xbc"
    return AstroPix4Readout(data, rid, 1_753_255_536_000_000_000 + rid).to_bytes()




def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.005)


def wait_datagrams(listener: Listener, n: int) -> ListenerStats:
    wait_for(lambda: listener.stats().datagrams >= n, f"{n} datagrams")
    return listener.stats()


def check_invariants(stats: ListenerStats) -> None:
    assert stats.datagrams == stats.accepted + stats.malformed + stats.oversize
    assert stats.accepted == stats.processed + stats.dropped + stats.buffered
    assert stats.malformed == sum(stats.malformed_by_reason.values())
    assert set(stats.malformed_by_reason) == set(MALFORMED_REASONS)


def ids_of(records: Sequence[bytes]) -> list[int]:
    return [struct.unpack_from("<I", r, 3)[0] for r in records]


def run_ids(make_listener, ids: Sequence[int]) -> ListenerStats:
    listener = make_listener().start()
    send(listener.address()[1], (record(i) for i in ids))
    stats = wait_datagrams(listener, len(ids))
    assert stats.accepted == len(ids)
    return stats


# --------------------------------------------------------------------------
# Exact counts


def test_n_sent_n_received(make_listener_both):
    listener = make_listener_both().start()
    assert listener.running
    group, port = listener.address()
    assert group == LOCAL_HOST and port > 0
    sent = [record(i, hits=i % 4) for i in range(5000)]
    received: list[bytes] = []
    send(port, sent)
    deadline = time.monotonic() + DEADLINE
    while len(received) < len(sent) and time.monotonic() < deadline:
        received.extend(listener.drain())
        time.sleep(0.005)
    assert received == sent  # every one, in order, byte for byte
    stats = listener.stats()
    check_invariants(stats)
    assert stats.datagrams == stats.accepted == stats.processed == 5000
    assert stats.bytes == sum(map(len, sent))
    assert stats.malformed == stats.lost == stats.out_of_order == stats.restarts == stats.dropped == 0
    assert stats.buffered == 0
    assert stats.last_datagram_time is not None and stats.last_datagram_time > 0
    assert stats.rcvbuf and stats.rcvbuf > 0


def test_drain_max_records_and_readouts(make_listener_both):
    listener = make_listener_both().start()
    send(listener.address()[1], (record(i) for i in range(100)))
    wait_datagrams(listener, 100)
    assert ids_of(listener.drain(10)) == list(range(10))
    assert listener.drain(0) == []
    assert ids_of(listener.drain(30)) == list(range(10, 40))
    readouts = listener.drain_readouts()
    assert [r.readout_id for r in readouts] == list(range(40, 100))
    assert all(isinstance(r, AstroPix4Readout) for r in readouts)
    assert listener.drain() == []
    stats = listener.stats()
    assert stats.processed == 100
    check_invariants(stats)


def test_skipped_ids_give_exact_lost(make_listener_both):
    skipped = {10, 20, 21, 22, *range(50, 60), 99}
    ids = [i for i in range(120) if i not in skipped]
    stats = run_ids(make_listener_both, ids)
    assert stats.lost == len(skipped) == 15
    assert stats.out_of_order == stats.restarts == 0
    check_invariants(stats)


def test_buffer_full_drops_are_counted_exactly(make_listener_both):
    listener = make_listener_both(buffer_size=100).start()
    send(listener.address()[1], (record(i) for i in range(1000)))
    stats = wait_datagrams(listener, 1000)
    assert stats.accepted == 1000
    assert stats.buffered == 100
    assert stats.dropped == 900
    assert stats.lost == 0  # dropped by us, not lost on the way
    check_invariants(stats)
    # The oldest are kept, the new ones were dropped.
    assert ids_of(listener.drain()) == list(range(100))
    send(listener.address()[1], (record(i) for i in range(1000, 1050)))
    stats = wait_datagrams(listener, 1050)
    assert stats.buffered == 50 and stats.dropped == 900 and stats.processed == 100
    check_invariants(stats)


def test_buffer_is_bounded_in_bytes_too(make_listener_both):
    # Large valid readouts: the byte bound is reached long before the count.
    big = [AstroPix4Readout(b"\xbc" * 1000, i, 0).to_bytes() for i in range(200)]
    size = len(big[0])
    listener = make_listener_both(buffer_size=100_000, buffer_bytes=10 * size + size // 2).start()
    send(listener.address()[1], big)
    stats = wait_datagrams(listener, 200)
    check_invariants(stats)
    assert stats.accepted == 200
    assert (stats.buffered, stats.buffered_bytes, stats.dropped) == (10, 10 * size, 190)
    assert ids_of(listener.drain(4)) == [0, 1, 2, 3]
    assert listener.stats().buffered_bytes == 6 * size
    send(listener.address()[1], [AstroPix4Readout(b"\xbc" * 1000, 200 + i, 0).to_bytes() for i in range(5)])
    stats = wait_datagrams(listener, 205)
    check_invariants(stats)
    assert (stats.buffered, stats.buffered_bytes, stats.dropped) == (10, 10 * size, 191)
    assert ids_of(listener.drain()) == [4, 5, 6, 7, 8, 9, 200, 201, 202, 203]
    assert listener.stats().buffered_bytes == 0


# --------------------------------------------------------------------------
# Malformed input


def junk_datagrams(seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    good = record(1)
    out = [
        b"",  # an empty datagram
        b"\xfe",
        good[:18],  # truncated header
        good[:10],
        b"\x00" * 19,  # wrong header, nothing after it
        b"\xfe\xdc\xbb" + good[3:],  # wrong magic
        good + b"\xbc",  # length field too small
        good[:-1],  # length field too large
        RECORD_HEADER + struct.pack("<IQI", 5, 0, 2**32 - 1),  # absurd length
        bytes(rng.getrandbits(8) for _ in range(65_000)),  # big junk
        RECORD_HEADER + struct.pack("<IQI", 5, 0, 1) + bytes(64_981),  # big, wrong length
        RECORD_HEADER + bytes(rng.getrandbits(8) for _ in range(200)),
    ]
    for _ in range(300):
        size = rng.choice([rng.randrange(0, 19), rng.randrange(19, 80), rng.randrange(80, 2000)])
        data = bytearray(rng.getrandbits(8) for _ in range(size))
        if rng.random() < 0.5 and size >= 3:
            data[:3] = RECORD_HEADER  # junk that passes the first check
        out.append(bytes(data))
    return out


def expected_reasons(datagrams: Iterable[bytes]) -> dict[str, int]:
    counts = dict.fromkeys(MALFORMED_REASONS, 0)
    for data in datagrams:
        try:
            parse_record(data)
        except MalformedReadoutError as exc:
            counts[exc.reason] += 1
        else:
            counts["valid"] = counts.get("valid", 0) + 1
    return counts


def test_malformed_flood_is_counted_by_reason(make_listener_both):
    listener = make_listener_both().start()
    port = listener.address()[1]
    junk = junk_datagrams()
    expected = expected_reasons(junk)
    assert expected.get("valid", 0) == 0
    assert all(expected[k] > 0 for k in ("short", "header", "length"))
    for round_ in range(3):
        send(port, junk, burst=20)
        send(port, (record(i) for i in range(round_ * 100, round_ * 100 + 100)))
    n = 3 * (len(junk) + 100)
    stats = wait_datagrams(listener, n)
    assert listener.running
    assert stats.malformed == 3 * len(junk)
    assert stats.malformed_by_reason == {k: 3 * expected[k] for k in MALFORMED_REASONS}
    assert stats.malformed_by_reason["other"] == 0
    assert stats.accepted == 300
    assert stats.lost == stats.out_of_order == stats.restarts == 0
    check_invariants(stats)
    assert ids_of(listener.drain()) == list(range(300))
    # and it still receives afterwards
    send(port, [record(300)])
    wait_datagrams(listener, n + 1)
    assert ids_of(listener.drain()) == [300]


# --------------------------------------------------------------------------
# Readout ids: reordering, duplicates, restarts


def test_duplicates_and_out_of_order(make_listener_both):
    ids = [*range(100, 110), 105, 109, 110, 112, 111, 113, 116, 114, 115, 117]
    stats = run_ids(make_listener_both, ids)
    # 105 and 109 repeat; 111 and 114, 115 arrive late into gaps that were counted lost
    assert stats.out_of_order == 5
    assert stats.lost == 0
    assert stats.restarts == 0


def test_late_readout_outside_the_gap_memory_stays_lost(make_listener):
    # 17 gaps of one id each, then the first missing id arrives: too old to be
    # recognised as late (16 gaps are remembered), so it counts out of order
    # and the loss stays counted.
    ids = [1000 + 2 * k for k in range(18)] + [1001]
    stats = run_ids(make_listener, ids)
    assert stats.lost == 17
    assert stats.out_of_order == 1
    assert stats.restarts == 0


def test_restart_to_a_small_id(make_listener):
    ids = [*range(5000, 5100), *range(0, 50)]
    stats = run_ids(make_listener, ids)
    assert stats.restarts == 1
    assert stats.lost == 0 and stats.out_of_order == 0


def test_restart_far_back_far_forward_and_counter_wrap(make_listener_both):
    last = 5000 - RESTART_BACKWARD_JUMP - 1
    ids = [
        *range(5000, 5010),
        *range(last - 9, last + 1),  # far back: restart
        last + RESTART_FORWARD_JUMP,  # the longest forward jump still counted as a loss
        *range(2**32 - 3, 2**32),  # a longer one: restart, not 4 billion lost readouts
        *range(0, 3),  # wrap to 0: restart
    ]
    stats = run_ids(make_listener_both, ids)
    assert stats.restarts == 3
    assert stats.lost == RESTART_FORWARD_JUMP - 1
    assert stats.out_of_order == 0


def test_one_stray_id_far_ahead_does_not_bury_the_loss_count(make_listener):
    # A record with an id from nowhere (another sender, a DAQ that starts at a
    # random value) must not count 2**31 lost readouts, nor make every later
    # id of the healthy stream count as out of order.
    ids = [*range(0, 100), 2**31 + 3, *range(100, 200), 205, *range(206, 300)]
    stats = run_ids(make_listener, ids)
    assert stats.lost == 5
    assert stats.restarts == 2  # the stray id, then the return to the old ids
    assert stats.out_of_order == 0


def test_small_repeated_id_near_the_start_is_a_restart(make_listener):
    # The documented rule: going back to an id below RESTART_ID_LIMIT is a restart.
    stats = run_ids(make_listener, [*range(0, 10), 3, 4, 5])
    assert RESTART_ID_LIMIT == 16
    assert stats.restarts == 1 and stats.out_of_order == 0 and stats.lost == 0


def _feed(ids: Sequence[int]) -> tuple[int, int, int]:
    """Run the id tracker alone (the loop's fast path plus ``IdTracker.track``)."""
    tracker = IdTracker()
    tracker.follow(ids)
    return tracker.take()


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 300),
    data=st.data(),
)
def test_lost_is_exact_under_local_reordering(n, data):
    start = 1000
    keep = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    keep[0] = True  # the baseline
    ids = [start + i for i in range(n) if keep[i]]
    # swap a few neighbours (reordering on the network)
    swaps = data.draw(st.lists(st.integers(1, max(1, len(ids) - 1)), max_size=8))
    for i in swaps:
        if 1 <= i < len(ids) - 1:
            ids[i], ids[i + 1] = ids[i + 1], ids[i]
    lost, out_of_order, restarts = _feed(ids)
    assert restarts == 0
    assert lost == (max(ids) - start + 1) - len(ids)
    assert out_of_order <= len(swaps)


# --------------------------------------------------------------------------
# Counters


def test_invariants_hold_while_running(make_listener_both):
    listener = make_listener_both(buffer_size=500).start()
    port = listener.address()[1]
    junk = junk_datagrams(3)[:50]
    done = threading.Event()
    snapshots: list[ListenerStats] = []

    def consumer():
        while not done.is_set():
            listener.drain(37)
            snapshots.append(listener.stats())
            time.sleep(0.001)

    thread = threading.Thread(target=consumer, name="test-consumer")
    thread.start()
    try:
        for k in range(10):
            send(port, (record(i) for i in range(k * 300, k * 300 + 300)))
            send(port, junk, burst=25)
        wait_datagrams(listener, 10 * 350)
    finally:
        done.set()
        thread.join()
    assert snapshots
    for stats in snapshots:
        check_invariants(stats)
    final = listener.stats()
    check_invariants(final)
    assert final.accepted == 3000 and final.malformed == 500


def test_stats_snapshot_is_frozen(make_listener):
    stats = make_listener().stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.datagrams = 3
    assert stats.datagrams == 0 and stats.last_datagram_time is None and stats.rcvbuf is None
    assert stats.as_dict()["malformed_by_reason"] == dict.fromkeys(MALFORMED_REASONS, 0)


def test_reset_counters(make_listener_both):
    listener = make_listener_both().start()
    port = listener.address()[1]
    send(port, [*(record(i) for i in [*range(0, 10), *range(20, 30)]), b"junk"])
    stats = wait_datagrams(listener, 21)
    assert stats.lost == 10 and stats.malformed == 1
    listener.reset_counters()
    stats = listener.stats()
    assert stats.malformed == stats.lost == stats.processed == stats.dropped == 0
    # kept, and counted as received after the reset so that the invariants hold
    assert stats.buffered == stats.accepted == stats.datagrams == 20
    check_invariants(stats)
    # The last id is forgotten: 500 is the new baseline, no loss counted.
    send(port, (record(i) for i in range(500, 510)))
    stats = wait_datagrams(listener, 30)
    assert stats.lost == 0 and stats.restarts == 0 and stats.out_of_order == 0
    check_invariants(stats)
    listener.reset_counters(clear_buffer=True)
    stats = listener.stats()
    assert stats.buffered == stats.accepted == 0
    assert listener.drain() == []


# --------------------------------------------------------------------------
# Life cycle


def test_start_stop_cycles_leave_nothing_behind(make_listener_both):
    listener = make_listener_both(timeout=0.02)
    threads = set(threading.enumerate())
    sockets = socket_inodes()
    port = None
    for cycle in range(50):
        listener.start()
        listener.start()  # idempotent
        assert listener.running
        assert [t.name for t in threading.enumerate() if t.name == "astropix-listener"] == ["astropix-listener"]
        if port is None:
            port = listener.address()[1]
        assert listener.address()[1] == port  # port 0: chosen once, then reused
        if cycle % 10 == 0:
            send(port, [record(cycle)])
            wait_datagrams(listener, cycle // 10 + 1)
        assert listener.stop()
        assert listener.stop()  # idempotent
        assert not listener.running
        assert set(threading.enumerate()) <= threads
        assert socket_inodes() <= sockets
    # counters persist across restarts of the listener
    assert listener.stats().accepted == 5
    # after stop() the port is free
    with MulticastReceiver(port=port) as rx:
        assert rx.port == port


def test_open_then_run_in_own_thread(make_listener):
    # The monitor's way: open() in the caller, run() on a thread it owns.
    listener = make_listener()
    listener.open()
    listener.open()  # idempotent
    port = listener.address()[1]
    thread = threading.Thread(target=listener.run, name="test-run")
    thread.start()
    wait_for(lambda: listener.running, "the loop")
    with pytest.raises(RuntimeError, match="already running"):
        listener.run()
    send(port, (record(i) for i in range(20)))
    wait_datagrams(listener, 20)
    listener.request_stop()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert not listener.running
    assert listener.stop()
    assert ids_of(listener.drain()) == list(range(20))


def test_run_without_open_raises(make_listener):
    with pytest.raises(RuntimeError, match="open"):
        make_listener().run()


def test_port_in_use_raises_in_the_caller(make_listener):
    with MulticastReceiver(port=0) as holder:
        listener = make_listener(port=holder.port)
        threads = set(threading.enumerate())
        with pytest.raises(AddressInUseError, match=f"127.0.0.1:{holder.port}.*already in use"):
            listener.start()
        assert set(threading.enumerate()) == threads
        assert not listener.running
        with pytest.raises(AddressInUseError):
            listener.open()


def test_invalid_arguments():
    with pytest.raises(InvalidAddressError, match="nowhere"):
        Listener(group="nowhere.invalid")
    with pytest.raises(ValueError, match="buffer_size"):
        Listener(buffer_size=0)
    with pytest.raises(ValueError, match="timeout"):
        Listener(timeout=0)
    with pytest.raises(ValueError, match="port"):
        Listener(port=70000)


def test_context_manager(make_listener):
    with make_listener() as listener:
        assert listener.running
        send(listener.address()[1], [record(1)])
        wait_datagrams(listener, 1)
    assert not listener.running


def test_multicast_listeners_share_a_group(make_listener):
    group = f"239.255.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
    a = make_listener(group=group, interface=LOCAL_HOST)
    try:
        a.start()
    except OSError as exc:
        pytest.skip(f"cannot join multicast group {group} on loopback here: {exc}")
    port = a.address()[1]
    b = make_listener(group=group, port=port, interface=LOCAL_HOST).start()
    with MulticastSender(group, port, ttl=1, interface=LOCAL_HOST) as tx:
        tx.send_data(record(0))
    deadline = time.monotonic() + 2.0
    while a.stats().datagrams == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if a.stats().datagrams == 0:
        pytest.skip(f"no multicast route to {group} on loopback here")
    wait_datagrams(b, 1)
    n = 1000
    count = 0
    with MulticastSender(group, port, ttl=1, interface=LOCAL_HOST) as tx:
        for i in range(1, n + 1):
            tx.send_data(record(i))
            count += 1
            if count % 100 == 0:
                time.sleep(0.001)
    for listener in (a, b):
        stats = wait_datagrams(listener, n + 1)
        assert stats.accepted == n + 1 and stats.lost == 0
        assert ids_of(listener.drain()) == list(range(n + 1))


def test_many_datagrams_in_one_socket_burst(make_listener_both):
    # Fill the socket while the loop is not running, then start it: the loop
    # publishes in bursts, and counts must still be exact.
    listener = make_listener_both()
    listener.open()
    port = listener.address()[1]
    with MulticastSender(LOCAL_HOST, port) as tx:
        for i in range(3000):
            tx.send_data(record(i))
    thread = threading.Thread(target=listener.run, name="test-run")
    thread.start()
    try:
        stats = wait_datagrams(listener, 3000)
    finally:
        listener.request_stop()
        thread.join(DEADLINE)
    assert stats.accepted == 3000 and stats.lost == 0
    assert ids_of(listener.drain()) == list(range(3000))


def test_socket_closed_under_the_loop_ends_it(make_listener_both):
    listener = make_listener_both(timeout=0.02).start()
    listener._receiver.socket.close()  # simulate an outside close
    wait_for(lambda: not listener.running, "the loop to end")
    assert not listener.running


# --------------------------------------------------------------------------
# The receive paths


def test_batch_receive_argument():
    assert Listener(port=0).batch_receive is HAVE_RECVMMSG  # auto
    assert Listener(port=0, batch_receive=False).batch_receive is False
    with pytest.raises(ValueError, match="batch_receive"):
        Listener(port=0, batch_receive=1)


@pytest.mark.skipif(not HAVE_RECVMMSG, reason="no recvmmsg here")
def test_recvmmsg_enosys_falls_back_to_recv(make_listener):
    listener = make_listener(batch_receive=True)
    calls = []

    def enosys(*args):
        calls.append(args)
        ctypes.set_errno(errno.ENOSYS)
        return -1

    batcher = listener._batcher()
    batcher.function = enosys
    listener.start()
    send(listener.address()[1], [*(record(i) for i in range(300)), b"junk"])
    stats = wait_datagrams(listener, 301)
    assert calls and listener.batch_receive is False
    assert stats.accepted == 300 and stats.malformed == 1 and stats.lost == 0
    assert ids_of(listener.drain()) == list(range(300))


@pytest.mark.skipif(not HAVE_RECVMMSG, reason="no recvmmsg here")
def test_recvmmsg_errors_are_survived(make_listener):
    listener = make_listener(batch_receive=True, timeout=0.02)
    batcher = listener._batcher()
    real = batcher.function
    failures = [errno.EINTR, errno.EAGAIN, errno.ENOBUFS]

    def flaky(*args):
        if failures:
            ctypes.set_errno(failures.pop(0))
            return -1
        return real(*args)

    batcher.function = flaky
    listener.start()
    send(listener.address()[1], (record(i) for i in range(1000)))
    stats = wait_datagrams(listener, 1000)
    assert not failures
    assert stats.accepted == 1000 and stats.lost == stats.malformed == 0
    check_invariants(stats)
    assert ids_of(listener.drain()) == list(range(1000))


# --------------------------------------------------------------------------
# The framing, in one place


def test_the_framing_names_are_those_of_record():
    assert listener_module.MALFORMED_REASONS is record_module.MALFORMED_REASONS  # re-exported
    assert listener_module.DEFAULT_MAX_DATA_BYTES == record_module.DEFAULT_MAX_DATA_BYTES == 4096
    assert not hasattr(listener_module, "_RECORD_STRUCT")
    for name in ("RECORD_STRUCT", "RECORD_MAGIC", "RECORD_HEADER_SIZE"):
        assert getattr(listener_module, name) is getattr(record_module, name)
    source = Path(listener_module.__file__).read_text(encoding="utf-8")
    assert "struct.Struct(" not in source and "\\xfe\\xdc\\xba" not in source


# --------------------------------------------------------------------------
# Oversize records


def big_record(rid: int, size: int) -> bytes:
    """A well-formed record with ``size`` bytes of data."""
    return pack_record(rid, 0, b"\xbc" * size)


def test_oversize_records_are_counted_not_kept(make_listener_both):
    listener = make_listener_both().start()
    limit = record_module.DEFAULT_MAX_DATA_BYTES
    assert listener.max_data_bytes == limit
    sizes = [10, limit, limit + 1, 20, 60_000, 30, limit + 1]
    sent = [big_record(i, size) for i, size in enumerate(sizes)]
    send(listener.address()[1], sent)
    stats = wait_datagrams(listener, len(sent))
    check_invariants(stats)
    assert (stats.accepted, stats.oversize, stats.malformed) == (4, 3, 0)
    assert stats.bytes == sum(map(len, sent))
    # their ids count: no gap where an oversize record was
    assert stats.lost == stats.out_of_order == stats.restarts == 0
    assert ids_of(listener.drain()) == [0, 1, 3, 5]
    assert listener.stats().as_dict()["oversize"] == 3


@pytest.mark.parametrize("bound", [0, None])
def test_no_data_bound(make_listener_both, bound):
    listener = make_listener_both(max_data_bytes=bound).start()
    assert listener.max_data_bytes is None
    send(listener.address()[1], [big_record(0, 60_000), big_record(1, 5000)])
    stats = wait_datagrams(listener, 2)
    assert (stats.accepted, stats.oversize) == (2, 0)
    assert ids_of(listener.drain()) == [0, 1]


def test_a_chosen_data_bound():
    listener = Listener(port=0, max_data_bytes=100)
    kept = listener.ingest([big_record(0, 100), big_record(1, 101), big_record(2, 99)])
    assert ids_of(kept) == [0, 2]
    assert listener.stats().oversize == 1
    for bad in (-1, 1.5, True, "4096"):
        with pytest.raises(ValueError, match="max_data_bytes"):
            Listener(port=0, max_data_bytes=bad)


def test_oversize_records_are_logged_now_and_then(caplog):
    listener = Listener(port=0)
    with caplog.at_level("WARNING", logger="astropix_nbmonitor.listener"):
        for i in range(20):
            listener.ingest([big_record(i, 5000)])
    messages = [r.getMessage() for r in caplog.records if "oversize" in r.getMessage()]
    assert len(messages) == 1 and "4096" in messages[0]
    assert listener.stats().oversize == 20


# --------------------------------------------------------------------------
# Readouts missed while stopped


def test_the_gap_across_a_stop_is_missed_while_stopped_not_lost(make_listener_both):
    listener = make_listener_both(timeout=0.02).start()
    port = listener.address()[1]
    send(port, (record(i) for i in range(100)))
    wait_datagrams(listener, 100)
    assert listener.stop()
    listener.start()  # open() again on the same port
    send(port, (record(i) for i in [*range(150, 200), *range(205, 210)]))
    stats = wait_datagrams(listener, 155)
    assert stats.missed_while_stopped == 50
    assert stats.lost == 5  # a gap while receiving is still a loss
    assert stats.restarts == stats.out_of_order == 0
    assert stats.as_dict()["missed_while_stopped"] == 50
    check_invariants(stats)


def test_a_restart_at_the_first_readout_after_a_stop_is_a_restart(make_listener):
    listener = make_listener(timeout=0.02).start()
    port = listener.address()[1]
    send(port, (record(i) for i in range(1000, 1100)))
    wait_datagrams(listener, 100)
    listener.stop()
    listener.start()
    send(port, (record(i) for i in range(10)))  # the DAQ restarted meanwhile: ids from 0
    wait_datagrams(listener, 110)
    listener.stop()
    listener.start()
    send(port, (record(i) for i in range(10 + RESTART_FORWARD_JUMP, 20 + RESTART_FORWARD_JUMP)))  # far ahead
    wait_datagrams(listener, 120)
    listener.stop()
    listener.start()
    send(port, [record(RESTART_FORWARD_JUMP + 15), record(RESTART_FORWARD_JUMP + 20)])  # back a little: a repeat
    stats = wait_datagrams(listener, 122)
    assert stats.restarts == 2
    assert stats.out_of_order == 1
    assert stats.missed_while_stopped == stats.lost == 0
    check_invariants(stats)


def test_reset_counters_forgets_the_id_across_a_stop(make_listener):
    listener = make_listener(timeout=0.02).start()
    port = listener.address()[1]
    send(port, (record(i) for i in range(100)))
    wait_datagrams(listener, 100)
    listener.stop()
    listener.reset_counters()
    listener.start()
    send(port, (record(i) for i in range(500, 510)))
    stats = wait_datagrams(listener, 10)
    assert stats.missed_while_stopped == stats.lost == stats.restarts == stats.out_of_order == 0


class _Sender(threading.Thread):
    """Send records with consecutive ids, paced, until stopped; ``sent`` counts the ids used."""

    def __init__(self, port: int) -> None:
        super().__init__(name="test-sender")
        self.port = port
        self.sent = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with MulticastSender(LOCAL_HOST, self.port) as tx:
            while not self.halt.is_set():
                for _ in range(20):
                    tx.send_data(record(self.sent))
                    self.sent += 1
                time.sleep(0.002)


def test_every_readout_sent_across_a_stop_and_start_is_counted(make_listener_both):
    listener = make_listener_both(timeout=0.02).start()
    sender = _Sender(listener.address()[1])
    sender.start()
    try:
        wait_for(lambda: listener.stats().accepted > 500, "data before the stop")
        assert listener.stop()
        time.sleep(1.0)  # stopped for a second while the sender goes on (not a timing assertion)
        listener.start()
        accepted = listener.stats().accepted
        wait_for(lambda: listener.stats().accepted > accepted + 500, "data after the start")
    finally:
        sender.halt.set()
        sender.join()
    sent = sender.sent

    def counted(stats: ListenerStats) -> int:
        return stats.accepted + stats.oversize + stats.lost + stats.missed_while_stopped

    wait_for(lambda: counted(listener.stats()) == sent, "every readout sent to be counted")
    listener.drain()
    stats = listener.stats()
    check_invariants(stats)
    assert stats.missed_while_stopped > 0
    assert stats.processed + stats.lost + stats.missed_while_stopped + stats.dropped == sent


def test_id_tracker_pause_and_resume():
    tracker = IdTracker()
    assert tracker.pause(-1) == -1  # nothing to hold before any readout
    expect = tracker.follow(range(100, 200))
    expect = tracker.pause(expect)
    assert expect == IdTracker.RESUMING
    expect = tracker.follow([230, 231, 240], expect)
    assert expect == 241
    assert tracker.take_missed() == 30 and tracker.take_missed() == 0
    assert tracker.take() == (8, 0, 0)
    # a step back after a pause follows the rules: a repeat
    expect = tracker.follow([195, 241], tracker.pause(expect))
    assert (expect, tracker.take(), tracker.take_missed()) == (242, (0, 1, 0), 0)
    # reset forgets the held expectation
    tracker.pause(expect)
    tracker.reset()
    assert tracker.follow([5000], IdTracker.RESUMING) == 5001
    assert tracker.take_missed() == 0


# --------------------------------------------------------------------------
# Ingest (replay) and discard


def mixed_stream() -> list[bytes]:
    """Malformed datagrams, oversize records, gaps, a late readout, a repeat and a restart."""
    junk = junk_datagrams(11)[:40]
    out: list[bytes] = []
    out += [record(i) for i in range(0, 50)]
    out += junk[:20]
    out += [record(i) for i in range(55, 60)]  # gap 50..54
    out += [record(52)]  # late: fills one of the gap
    out += [big_record(60, 5000), record(61), record(61), big_record(62, 4097)]  # oversize, a repeat
    out += [record(i) for i in range(63, 80)]
    out += junk[20:]
    out += [record(i) for i in range(3, 30)]  # a restart (far back... by less than 1024, but to an id < 16)
    out += [record(i) for i in range(35, 40)]  # gap 30..34
    return out


def comparable(stats: ListenerStats) -> dict:
    out = stats.as_dict()
    del out["last_datagram_time"], out["rcvbuf"]
    return out


def test_ingest_counts_as_datagrams_arriving(make_listener_both):
    stream = mixed_stream()
    replayed = Listener(port=0)  # never opened
    kept = replayed.ingest(stream)
    ingested = replayed.stats()
    check_invariants(ingested)
    assert ingested.rcvbuf is None and ingested.last_datagram_time is None
    assert (ingested.processed, ingested.buffered, ingested.dropped) == (len(kept), 0, 0)
    assert ingested.oversize == 2 and ingested.restarts == 1 and ingested.out_of_order == 2
    assert ingested.lost == 4 + 5 and ingested.malformed == 40 and ingested.missed_while_stopped == 0
    expected_ids = [*range(50), *range(55, 60), 52, 61, 61, *range(63, 80), *range(3, 30), *range(35, 40)]
    assert ids_of(kept) == expected_ids

    live = make_listener_both().start()
    send(live.address()[1], stream, burst=20)
    wait_datagrams(live, len(stream))
    received = live.drain()
    assert received == kept  # the same records, in the same order
    assert comparable(live.stats()) == comparable(ingested)


def test_ingest_returns_bytes_and_sets_the_time_only_when_given():
    listener = Listener(port=0)
    kept = listener.ingest(iter([bytearray(record(0)), memoryview(record(1)), b"junk"]))
    assert kept == [record(0), record(1)] and all(type(r) is bytes for r in kept)
    assert listener.stats().last_datagram_time is None
    listener.ingest([record(2)], received_at=1234.5)
    stats = listener.stats()
    assert stats.last_datagram_time == 1234.5
    assert (stats.datagrams, stats.accepted, stats.processed, stats.malformed) == (4, 3, 3, 1)
    assert listener.ingest([]) == []
    assert not listener.running


def test_ingest_on_a_running_listener_follows_the_same_ids(make_listener_both):
    listener = make_listener_both(buffer_size=500).start()
    port = listener.address()[1]
    junk = junk_datagrams(5)[:60]
    done = threading.Event()
    snapshots: list[ListenerStats] = []

    def consumer() -> None:
        while not done.is_set():
            listener.drain(41)
            snapshots.append(listener.stats())
            time.sleep(0.001)

    def junk_sender() -> None:
        for _ in range(5):
            send(port, junk, burst=20)

    threads = [
        threading.Thread(target=consumer, name="test-consumer"),
        threading.Thread(target=junk_sender, name="test-junk"),
    ]
    send(port, (record(i) for i in range(1000)))
    wait_datagrams(listener, 1000)
    for thread in threads:
        thread.start()
    try:
        ingested = 0
        for first in range(1000, 3000, 100):  # the live stream's next ids, while junk arrives
            chunk = [record(i) for i in range(first, first + 100)] + [b"\xfe\xdc\xba short"]
            ingested += len(listener.ingest(chunk))
        threads[1].join()
        send(port, (record(i) for i in range(3000, 4000)))
        wait_datagrams(listener, 4000 + 20 + 5 * len(junk))
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert ingested == 2000
    assert snapshots
    for stats in snapshots:
        check_invariants(stats)
    listener.drain()
    stats = listener.stats()
    check_invariants(stats)
    assert stats.accepted == 4000 and stats.malformed == 20 + 5 * len(junk)
    # one expected id for the loop and ingest: no gap, restart or reordering seen
    assert stats.lost == stats.restarts == stats.out_of_order == stats.missed_while_stopped == 0
    assert stats.processed + stats.dropped == 4000


def test_ingest_after_a_stop_counts_the_gap_as_missed(make_listener):
    listener = make_listener(timeout=0.02).start()
    send(listener.address()[1], (record(i) for i in range(10)))
    wait_datagrams(listener, 10)
    listener.stop()
    assert ids_of(listener.ingest([record(15), record(16)])) == [15, 16]
    stats = listener.stats()
    assert (stats.missed_while_stopped, stats.lost) == (5, 0)


def test_discard_buffer_counts_what_it_held_as_dropped(make_listener_both):
    listener = make_listener_both().start()
    send(listener.address()[1], (record(i) for i in range(300)))
    wait_datagrams(listener, 300)
    listener.drain(100)
    assert listener.discard_buffer() == 200
    stats = listener.stats()
    assert (stats.buffered, stats.buffered_bytes, stats.dropped, stats.processed) == (0, 0, 200, 100)
    check_invariants(stats)
    assert listener.discard_buffer() == 0
    assert listener.drain() == []


def test_new_counters_in_a_fresh_snapshot():
    stats = Listener(port=0).stats().as_dict()
    assert stats["oversize"] == stats["missed_while_stopped"] == 0


def test_wait_for_records_returns_on_records_on_wake_and_on_timeout():
    """What the processing thread sleeps on (issue 14): records buffered, wake(), or the timeout."""
    listener = Listener(port=0, coalesce=0.0).start()
    try:
        assert listener.wait_for_records(0.01) is False  # nothing: the timeout
        listener.wake()
        assert listener.wait_for_records(5.0) is False  # woken, no records
        with MulticastSender("127.0.0.1", listener.port) as sender:
            sender.send_data(record(0))
        assert listener.wait_for_records(5.0) is True
        assert len(listener.drain()) == 1
        assert listener.wait_for_records(0.01) is False  # the event was cleared before the drain
    finally:
        listener.stop()


def test_coalesce_is_checked_and_off_when_zero():
    with pytest.raises(ValueError, match="coalesce"):
        Listener(port=0, coalesce=-1)
    with pytest.raises(ValueError, match="coalesce"):
        Listener(port=0, coalesce=True)
    assert Listener(port=0).coalesce == 0.004
    assert Listener(port=0, coalesce=0).coalesce == 0.0


def test_wait_for_records_can_wait_for_a_number_of_records():
    """With min_records the consumer sleeps until that many are buffered (not woken per burst before)."""
    listener = Listener(port=0, coalesce=0.0).start()
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(listener.wait_for_records(30.0, min_records=5)))
    try:
        waiter.start()
        with MulticastSender("127.0.0.1", listener.port) as sender:
            for i in range(3):
                sender.send_data(record(i))
            deadline = time.monotonic() + 10
            while listener.stats().buffered < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert listener.stats().buffered == 3
            assert waiter.is_alive() and result == []  # 3 of the 5: still asleep
            for i in range(3, 5):
                sender.send_data(record(i))
            waiter.join(10)
        assert result == [True]
        assert listener.wait_for_records(0.0, min_records=5) is True  # already there: no wait
        assert listener.wait_for_records(0.01, min_records=6) is False
        assert len(listener.drain()) == 5
        listener.wake()
        assert listener.wait_for_records(30.0, min_records=100) is False  # woken whatever it waits for
    finally:
        listener.stop()
        waiter.join(10)


def test_receive_now_takes_what_waits_in_the_socket_during_the_pause():
    """A reader's receive_now() buffers, on its thread, the datagrams the loop leaves in the socket while
    it pauses (a long coalescing pause here), with the same checks and counters; 0 when stopped."""
    listener = Listener(port=0, coalesce=0.9).start()
    try:
        with MulticastSender("127.0.0.1", listener.port) as sender:
            sender.send_data(record(0))
            deadline = time.monotonic() + 10
            while listener.stats().datagrams < 1 and time.monotonic() < deadline:
                time.sleep(0.001)
            # The loop received record 0 alone and now pauses 0.9 s: these wait in the socket.
            sender.send_data(record(1))
            sender.send_data(b"not a record")
            sender.send_data(record(3))
            got = listener.receive_now()
        stats = listener.stats()
        assert got == 3
        assert (stats.datagrams, stats.accepted, stats.malformed, stats.lost, stats.buffered) == (4, 3, 1, 1, 3)
        assert [r[3:7] for r in listener.drain()] == [struct.pack("<I", i) for i in (0, 1, 3)]
    finally:
        listener.stop()
    assert listener.receive_now() == 0
    assert Listener(port=0).receive_now() == 0  # never opened
