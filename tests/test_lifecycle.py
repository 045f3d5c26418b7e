"""Life cycle under stress, with data flowing (issue 6, point 4).

* 100 start/stop cycles of one monitor on a fixed port;
* 20 monitors created on one port in a loop, as when the notebook cell that
  makes the monitor is run again and again (sometimes closing the previous
  one first, mostly not: the registry stops it).

Throughout, a simulated DAQ sends to the port. Afterwards, the open file
descriptors and the threads are those of the start, and a plain UDP socket,
without ``SO_REUSEADDR``, binds the port at once: every receiving socket was
closed.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
import weakref

import ipywidgets.widgets.widget as widget_module
import pytest

from conftest import wait_for as _wait_for
from astropix_nbmonitor import monitor as monitor_mod
from astropix_nbmonitor.monitor import board, registry
from astropix_nbmonitor.monitor import AstroPix4SimpleMonitor
from astropix_nbmonitor.source import SimulatedSource

MONITOR_THREADS = ("astropix-monitor-listener", "astropix-monitor-processing")




def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _thread_count() -> int:
    return threading.active_count()


def _monitor_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in MONITOR_THREADS]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_port_bindable_at_once(port: int) -> None:
    """A plain UDP socket, without SO_REUSEADDR, binds the port: nothing else holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        s.bind(("127.0.0.1", port))
        # And it is the port the DAQ is sending to: data arrive on it.
        s.settimeout(10.0)
        assert s.recv(65536)[:3] == b"\xfe\xdc\xba"


def test_100_start_stop_cycles_with_data_flowing_leave_nothing_behind(no_leaks):
    port = _free_port()
    source = SimulatedSource(port=port, rate_hz=5000.0, seed=61, hits_per_readout=2.0)
    mon: AstroPix4SimpleMonitor | None = None
    try:
        source.start()
        mon = AstroPix4SimpleMonitor(port=port)
        fds, threads = _fd_count(), _thread_count()  # the source's socket and thread included
        history = []
        for cycle in range(100):
            before = mon.listener_stats().accepted
            mon.start(refresh_interval=0.02)
            assert mon.running and sorted(_monitor_threads()) == sorted(MONITOR_THREADS)
            # Some data in every cycle (the first datagrams after the bind).
            _wait_for(lambda: mon.listener_stats().accepted > before, what=f"data in cycle {cycle}")
            if cycle % 10 == 0:  # now and then, long enough for the processing thread to refresh
                _wait_for(lambda: mon.num_readouts > before, what=f"a refresh in cycle {cycle}")
            mon.stop()
            assert not mon.running and _monitor_threads() == []
            stats = mon.listener_stats()
            # stop() processed everything the listener had received.
            assert mon.num_readouts == stats.accepted == stats.processed
            assert stats.buffered == stats.dropped == stats.malformed == 0
            # A stopped monitor misses what is sent meanwhile: no loss counted for it.
            assert stats.lost == stats.restarts == stats.out_of_order == 0
            history.append(mon.num_readouts)
            assert _fd_count() == fds, f"cycle {cycle}: file descriptors {_fd_count()}, started with {fds}"
            assert _thread_count() == threads, f"cycle {cycle}: threads {threading.enumerate()}"
        # Counters only ever grew, strictly (every cycle received something).
        assert all(a < b for a, b in zip(history, history[1:])), history
        assert history[0] > 0
        assert mon.num_hits == mon.hit_map.sum() > 0
        assert mon.error_count == 0
        mon.close()
        assert _fd_count() == fds and _thread_count() == threads
        assert (monitor_mod.LOCAL_HOST, port) not in registry._ACTIVE
        _assert_port_bindable_at_once(port)  # with the DAQ still sending
    finally:
        if mon is not None:
            mon.close()
        source.stop()


def test_20_monitors_created_in_a_loop_on_one_port_like_a_rerun_cell(no_leaks):
    port = _free_port()
    source = SimulatedSource(port=port, rate_hz=3000.0, seed=62, hits_per_readout=2.0)
    monitors: list[AstroPix4SimpleMonitor] = []
    try:
        source.start()
        fds, threads = _fd_count(), _thread_count()  # the source's socket and thread included
        mon = None
        for i in range(20):
            previous = mon
            if previous is not None and i % 4 == 0:
                previous.close()  # the user closed it first
            # The cell, run again.
            mon = AstroPix4SimpleMonitor(port=port).start()
            monitors.append(mon)
            if previous is not None:
                assert not previous.running, f"monitor {i - 1} still running after monitor {i} took the port"
            assert mon.running
            assert sorted(_monitor_threads()) == sorted(MONITOR_THREADS)  # only the new one's threads
            assert registry._ACTIVE[(monitor_mod.LOCAL_HOST, port)]() is mon
            _wait_for(lambda: mon.num_readouts > 0, what=f"data in monitor {i}")
            assert mon.malformed_packets == mon.lost_readouts == 0
            # Each receiving socket so far is closed, but the current monitor's one
            # (and its listener loop's wake-up eventfd).
            assert _fd_count() == fds + 2
        for old in monitors[:-1]:
            assert not old.running and old.num_readouts > 0
            assert old.listener_stats().dropped == 0
        # All closed at the end.
        for m in monitors:
            m.close()
        assert _monitor_threads() == []
        assert _fd_count() == fds, f"file descriptors {_fd_count()}, started with {fds}"
        assert _thread_count() == threads, f"threads {threading.enumerate()}"
        assert (monitor_mod.LOCAL_HOST, port) not in registry._ACTIVE
        _assert_port_bindable_at_once(port)  # with the DAQ still sending
        assert all(m.error_count == 0 for m in monitors)
    finally:
        for m in monitors:
            m.close()
        source.stop()


def test_closed_monitors_are_garbage_collectable(no_leaks):
    """A re-run cell drops the old monitor: once closed, nothing must keep it (or its widgets) alive.

    A monitor that is only *stopped* (by the registry, or by the user) is not
    expected to be collected: ipywidgets keeps every widget that is not closed
    in its registry, since a front end may still show it. It holds no thread
    and no socket then (see the tests above), only memory.
    """
    port = _free_port()
    source = SimulatedSource(port=port, rate_hz=3000.0, seed=63)
    open_widgets = getattr(widget_module, "_instances", {})  # ipywidgets 8: every widget not closed
    refs = []
    widgets_before = len(open_widgets)
    try:
        source.start()
        for _ in range(3):
            mon = AstroPix4SimpleMonitor(port=port).start()
            _wait_for(lambda: mon.num_readouts > 0, what="data")
            refs.append(weakref.ref(mon))
            mon.close()
            del mon
    finally:
        source.stop()
    gc.collect()
    left_open = len(open_widgets) - widgets_before
    alive = sum(r() is not None for r in refs)
    assert (alive, left_open) == (0, 0), f"{alive} closed monitors still alive, {left_open} of their widgets left open"
