"""Tests of astropix_nbmonitor.sock: the UDP receiver and sender, over loopback."""

from __future__ import annotations

import errno
import os
import random
import socket
import threading
import time

import pytest

from astropix_nbmonitor import sock as sock_module
from astropix_nbmonitor.fmt import AstroPix4Readout, MalformedReadoutError
from astropix_nbmonitor.sock import (
    DEFAULT_GROUP,
    DEFAULT_PORT,
    LOCAL_HOST,
    MAX_DATAGRAM_SIZE,
    AddressInUseError,
    InvalidAddressError,
    MulticastReceiver,
    MulticastSender,
    is_multicast,
    resolve_address,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _leak_check(no_leaks):
    """Every test here leaves no thread and no socket behind (conftest's no_leaks)."""


def readout(rid: int, hits: int = 1) -> AstroPix4Readout:
    data = b"\xbc\xbc" + b"\xe0\x50\x42\x03\x06\x20\xd7\x01\xbc" * hits + b"\xbc"
    return AstroPix4Readout(data, rid, 1_753_255_536_000_000_000 + rid)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL_HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------


def test_constants():
    assert LOCAL_HOST == "127.0.0.1"
    assert DEFAULT_GROUP == "239.1.1.1"
    assert DEFAULT_PORT == 5007
    assert MAX_DATAGRAM_SIZE >= 65507
    assert is_multicast(DEFAULT_GROUP)
    assert not is_multicast(LOCAL_HOST)
    assert resolve_address("localhost") == "127.0.0.1"


def test_unicast_round_trip():
    with MulticastReceiver(AstroPix4Readout, LOCAL_HOST, 0, timeout=5.0) as rx:
        group, port = rx.address()
        assert group == LOCAL_HOST and port > 0
        assert rx.fileno() >= 0
        sent = [readout(i, hits=i % 3) for i in range(50)]
        with MulticastSender(LOCAL_HOST, port) as tx:
            assert tx.address() == (LOCAL_HOST, port)
            for r in sent[:40]:
                assert tx.send_readout(r) == len(r.to_bytes())
            assert tx.send_records(r.to_bytes() for r in sent[40:45]) == 5
            for r in sent[45:]:
                tx.send_data(r.to_bytes())
        got = [rx.receive() for _ in range(40)]
        assert got == sent[:40]
        assert [rx.recv_bytes() for _ in range(5)] == [r.to_bytes() for r in sent[40:45]]
        buf = bytearray(MAX_DATAGRAM_SIZE)
        for r in sent[45:]:
            n = rx.receive_into(buf)
            assert bytes(buf[:n]) == r.to_bytes()
    assert rx.closed and rx.fileno() == -1
    assert tx.closed and tx.fileno() == -1
    rx.close()  # twice is harmless
    tx.close()
    with pytest.raises(OSError, match="closed"):
        rx.recv_bytes()
    with pytest.raises(OSError, match="closed"):
        tx.send_data(b"x")


def test_receive_malformed_raises_and_timeout():
    with MulticastReceiver(port=0, timeout=0.05) as rx, MulticastSender(port=rx.port) as tx:
        tx.send_data(b"\xfe\xdc\xba" + b"\x00" * 10)
        with pytest.raises(MalformedReadoutError) as info:
            rx.receive()
        assert info.value.reason == "short"
        with pytest.raises(TimeoutError):
            rx.receive()


def test_receive_buffer_reported():
    with MulticastReceiver(port=0) as rx:
        assert isinstance(rx.rcvbuf, int) and rx.rcvbuf > 0
        assert rx.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == rx.rcvbuf
    with MulticastReceiver(port=0, rcvbuf=None) as rx:
        assert rx.rcvbuf == rx.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    with MulticastReceiver(port=0, rcvbuf=256 * 1024) as rx:
        assert rx.rcvbuf >= 256 * 1024 or rx.rcvbuf > 0  # capped by rmem_max when not root


@pytest.mark.parametrize("group", ["not-an-address.invalid", "300.1.1.1", "", "1.2.3", None, 127001])
def test_invalid_group(group):
    with pytest.raises(InvalidAddressError) as info:
        MulticastReceiver(group=group, port=0)
    assert repr(group) in str(info.value)
    with pytest.raises(ValueError, match="invalid address"):
        MulticastSender(group, 5007)


@pytest.mark.parametrize("port", [-1, 65536, "5007", 1.5, True])
def test_invalid_port(port):
    with pytest.raises(InvalidAddressError, match="invalid port"):
        MulticastReceiver(port=port)
    with pytest.raises(InvalidAddressError, match="invalid port"):
        MulticastSender(LOCAL_HOST, port)


def test_sender_bad_arguments():
    with pytest.raises(InvalidAddressError, match="port 0"):
        MulticastSender(LOCAL_HOST, 0)
    with pytest.raises(InvalidAddressError, match="TTL"):
        MulticastSender(DEFAULT_GROUP, 5007, ttl=300)
    with MulticastSender(LOCAL_HOST, free_udp_port()) as tx, pytest.raises(ValueError, match="70000-byte"):
        tx.send_data(b"\x00" * 70_000)


def test_not_an_address_of_this_machine():
    # 203.0.113.0/24 is TEST-NET-3: never configured on a host.
    with pytest.raises(InvalidAddressError, match=r"203\.0\.113\.7:\d+.*not an address of this machine"):
        MulticastReceiver(group="203.0.113.7", port=0)


def test_unicast_port_in_use_is_a_clear_error():
    with MulticastReceiver(port=0) as first:
        port = first.port
        with pytest.raises(AddressInUseError) as info:
            MulticastReceiver(port=port)
        exc = info.value
        assert isinstance(exc, OSError)
        assert exc.errno == errno.EADDRINUSE
        assert exc.address == LOCAL_HOST and exc.port == port
        message = str(exc)
        assert f"{LOCAL_HOST}:{port}" in message
        assert "already in use" in message and "--port" in message
        # Python callers are told the argument to change, not only the command-line option.
        assert "port=" in message
    # Once closed, the port is free again at once (UDP has no TIME_WAIT).
    with MulticastReceiver(port=port) as again:
        assert again.port == port


@pytest.mark.parametrize("multicast", [False, True], ids=["unicast", "multicast"])
def test_port_in_use_message_names_the_python_argument_and_the_option(multicast):
    group = DEFAULT_GROUP if multicast else LOCAL_HOST
    exc = sock_module._bind_error(OSError(errno.EADDRINUSE, "Address already in use"), group, 5007, multicast)
    assert isinstance(exc, AddressInUseError)
    assert (exc.address, exc.port) == (group, 5007)
    message = str(exc)
    assert f"{group}:5007" in message and "already in use" in message
    assert "port=... in Python" in message and "--port on the command line" in message


def test_sender_to_nobody_does_not_fail():
    port = free_udp_port()
    with MulticastSender(LOCAL_HOST, port) as tx:
        for i in range(20):
            tx.send_readout(readout(i))  # unconnected: no ECONNREFUSED on later sends


def test_multicast_sender_options():
    with MulticastSender(DEFAULT_GROUP, 5007, ttl=1) as tx:
        sock = tx._sock
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 1
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 1
        assert tx.multicast
    with MulticastSender(LOCAL_HOST, 5007) as tx:
        assert not tx.multicast


# -- multicast ----------------------------------------------------------------


def _multicast_group() -> str:
    return f"239.255.{random.randrange(1, 255)}.{random.randrange(1, 255)}"


def _multicast_or_skip(group: str, interface: str | None) -> int:
    """A free port on which multicast to ``group`` reaches this machine; else skip."""
    try:
        with MulticastReceiver(group=group, port=0, timeout=1.0, interface=interface) as rx:
            port = rx.port
            with MulticastSender(group, port, ttl=1, interface=interface) as tx:
                tx.send_data(readout(0).to_bytes())
            rx.receive()
    except (OSError, TimeoutError) as exc:
        pytest.skip(f"no multicast route to {group} via interface {interface or 'INADDR_ANY'} here: {exc}")
    return port


@pytest.mark.parametrize("interface", ["127.0.0.1", None], ids=["loopback", "any"])
def test_two_receivers_on_one_group(interface):
    group = _multicast_group()
    port = _multicast_or_skip(group, interface)
    n = 300
    with (
        MulticastReceiver(group=group, port=port, timeout=5.0, interface=interface) as a,
        MulticastReceiver(group=group, port=port, timeout=5.0, interface=interface) as b,
    ):
        assert a.address() == b.address() == (group, port)
        assert a.multicast and b.multicast
        sent = [readout(i) for i in range(n)]
        with MulticastSender(group, port, ttl=1, interface=interface) as tx:
            for k in range(0, n, 50):
                for r in sent[k : k + 50]:
                    tx.send_readout(r)
                time.sleep(0.002)
        assert [a.receive() for _ in range(n)] == sent
        assert [b.receive() for _ in range(n)] == sent


def test_multicast_receiver_ignores_other_groups():
    group = _multicast_group()
    port = _multicast_or_skip(group, LOCAL_HOST)
    other = _multicast_group()
    while other == group:
        other = _multicast_group()
    with (
        MulticastReceiver(group=group, port=port, timeout=0.3, interface=LOCAL_HOST) as rx,
        MulticastReceiver(group=other, port=port, timeout=5.0, interface=LOCAL_HOST) as rx_other,
    ):
        with MulticastSender(other, port, ttl=1, interface=LOCAL_HOST) as tx:
            tx.send_readout(readout(7))
        assert rx_other.receive().readout_id == 7
        with pytest.raises(TimeoutError):
            rx.receive()
