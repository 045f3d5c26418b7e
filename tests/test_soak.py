"""A short overload soak (the long one is ``benchmarks/soak.py``).

A sender process floods a running monitor for a few seconds; the monitor's
socket buffer and listener buffer are made small so that readouts are lost
both ways: dropped by the kernel (seen as gaps in the ids: ``lost``) and by
the listener's full buffer (``dropped``). Every readout sent must be
accounted for exactly, the display must keep refreshing, and afterwards the
monitor must process a normal stream exactly. No timing and no memory figure
is asserted here: they belong to the benchmark.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from astropix_nbmonitor.fmt import decode_batch
from astropix_nbmonitor.sim import AstroPix4Simulator
from astropix_nbmonitor.sock import DEFAULT_RCVBUF
from conftest import monitor_threads as _monitor_threads
from test_monitor import _expected_maps, _send, _wait_for

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
#: Seconds of overload.
SOAK_SECONDS = 3.0
#: Refresh interval of the soaked monitor (s).
REFRESH = 0.2
#: A listener buffer smaller than one received burst (256 datagrams): full buffers are certain.
SMALL_BUFFER = 200
#: A socket receive buffer smaller than one sent block of 256 datagrams: kernel drops are certain.
SMALL_RCVBUF = 64 * 1024


@pytest.fixture
def soak(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``benchmarks/soak.py``, imported from its path.

    ``benchmarks/`` goes on ``sys.path`` for the test: soak imports
    ``bench_udp`` from there, and the spawned sender processes import
    ``soak`` by name.
    """
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("soak", BENCHMARKS / "soak.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "soak", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_overload_counts_every_readout_and_keeps_refreshing(no_leaks, soak: ModuleType) -> None:
    data = soak.bench_udp.payloads()
    mon = soak.SoakMonitor(port=0)
    assert mon.group == "127.0.0.1"
    # The constructor's buffer_size/rcvbuf set these once; this test shrinks
    # them for the overload and restores them for the normal stream after.
    listener = mon.engine.listener
    default_buffer = listener.buffer_size
    try:
        listener.buffer_size = SMALL_BUFFER
        listener.rcvbuf_request = SMALL_RCVBUF
        mon.start(refresh_interval=REFRESH)
        run = soak.run_soak(mon, 0, SOAK_SECONDS, data, processes=1)
        mon.stop()
        acc = soak.Accounting.of(mon, run.sent)

        # The overload happened: many readouts sent, lost both ways, some processed.
        assert run.sent_by_senders > 20_000
        assert acc.lost > 0, "no kernel drop: the monitor was not overloaded"
        assert acc.dropped > 0, "the listener's buffer never overflowed"
        assert acc.processed > 0
        # Every readout sent is accounted for, exactly.
        assert acc.malformed == 0
        assert acc.restarts == 0
        assert acc.listener_consistent
        assert acc.sent == acc.processed + acc.lost + acc.dropped, acc
        assert mon.batch_readouts == acc.processed
        # The display kept refreshing while the sender ran.
        refreshes, durations, _ = run.refreshes(mon)
        assert len(refreshes) >= 3, f"{len(refreshes)} refreshes in {run.t_end - run.t_go:.1f} s of overload"
        assert len(durations) == len(refreshes)
        assert len(run.cell_latency) > 0

        # Afterwards, with its usual buffers, the monitor handles a normal stream exactly.
        listener.buffer_size = default_buffer
        listener.rcvbuf_request = DEFAULT_RCVBUF
        counts = (mon.num_readouts, mon.num_hits, mon.lost_readouts, mon.dropped_readouts)
        accepted = mon.listener_stats().accepted
        hit_map = mon.hit_map.values().copy()
        tot = mon.tot_hist.values().copy()
        records = AstroPix4Simulator(seed=21, hits_per_readout=2.0).generate(3000).records
        mon.start(refresh_interval=REFRESH)
        _send(mon.port, records)
        _wait_for(lambda: mon.listener_stats().accepted >= accepted + len(records), what="the normal stream")
        mon.stop()
        hits = decode_batch(records)
        exp_map, exp_tot = _expected_maps(hits)
        assert mon.num_readouts - counts[0] == len(records)
        assert mon.num_hits - counts[1] == len(hits) > 0
        assert (mon.lost_readouts, mon.dropped_readouts, mon.malformed_packets) == (counts[2], counts[3], 0)
        assert np.array_equal(mon.hit_map.values() - hit_map, exp_map)
        assert np.array_equal(mon.tot_hist.values() - tot, exp_tot)
    finally:
        mon.close()
    assert _monitor_threads() == []
