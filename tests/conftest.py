"""Shared test helpers: the real AstroPix data, and a reference decoding path.

The real data (docs/format.md section 7) lives outside the repository, in
``../shared/astropix-data/`` relative to the repository root. Tests that need
it skip, with the reason, where it is absent (a clone elsewhere).
"""

from __future__ import annotations

import csv
import os
import signal
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest

from astropix_nbmonitor.fmt import (
    HIT_DTYPE,
    AstroPix4Readout,
    DecodingFlag,
    MalformedReadoutError,
    hits_to_array,
)

def pytest_configure(config: pytest.Config) -> None:
    # When a hypothesis test fails, hypothesis' pytest plugin touches
    # mypy_extensions.TypedDict while building the report; its
    # DeprecationWarning, turned into an error by the project's settings,
    # replaces the real failure by an INTERNALERROR.
    config.addinivalue_line("filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")


#: Where the shared real data is expected: beside the repository.
SHARED_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "astropix-data"
REAL_APX = "20250723_092534_data.apx"
REAL_CSV = "20250723_092534_data.csv"
TEST_LOG = "decode/test.log"


def shared_data_dir() -> Path:
    """The shared real-data folder; skips the calling test when it is absent."""
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(
            f"real AstroPix data not found at ../shared/astropix-data/ beside the repository ({SHARED_DATA_DIR})"
        )
    return SHARED_DATA_DIR


def shared_data_file(name: str) -> Path:
    """One file of the shared data folder; skips the calling test when absent."""
    path = shared_data_dir() / name
    if not path.is_file():
        pytest.skip(f"real AstroPix data file {name} not found in {SHARED_DATA_DIR}")
    return path


@pytest.fixture(name="shared_data_dir", scope="session")
def _shared_data_dir_fixture() -> Path:
    """Fixture form of :func:`shared_data_dir` (session scope: usable with hypothesis)."""
    return shared_data_dir()


@pytest.fixture(scope="session")
def real_apx_path() -> Path:
    """The real .apx file (775 readouts, 776 hits)."""
    return shared_data_file(REAL_APX)


@pytest.fixture(scope="session")
def real_records() -> list[bytes]:
    """The records of the real .apx file, split here without the fileio module."""
    return split_apx(shared_data_file(REAL_APX).read_bytes())[1]


@pytest.fixture(scope="session")
def real_csv_hits() -> np.ndarray:
    """The offline decoder's hits for the real file, as a HIT_DTYPE array."""
    return read_hits_csv(shared_data_file(REAL_CSV))


@pytest.fixture(scope="session")
def test_log_data() -> list[bytes]:
    """The board bytes of the seven hand-made readouts of decode/test.log."""
    return read_test_log(shared_data_file(TEST_LOG))


# --------------------------------------------------------------------------
# Readers that do not depend on the code under test
# --------------------------------------------------------------------------


def split_apx(raw: bytes) -> tuple[bytes, list[bytes]]:
    """Split the bytes of an .apx file into (JSON header, records), minimally."""
    assert raw[:6] == b"%APXDF"
    (n,) = struct.unpack_from("<I", raw, 6)
    header = raw[10 : 10 + n]
    pos = 10 + n
    records = []
    while pos + 19 <= len(raw):
        (length,) = struct.unpack_from("<I", raw, pos + 15)
        if pos + 19 + length > len(raw):
            break
        records.append(raw[pos : pos + 19 + length])
        pos += 19 + length
    return header, records


def read_hits_csv(path: Path) -> np.ndarray:
    """Read the offline decoder's CSV (``#`` JSON line, header line, rows)."""
    with path.open(newline="") as f:
        first = f.readline()
        assert first.startswith("#")
        rows = list(csv.DictReader(f))
    out = np.zeros(len(rows), dtype=HIT_DTYPE)
    for name in HIT_DTYPE.names:
        if name == "tot_us":
            out[name] = [float(r[name]) for r in rows]
        else:
            out[name] = [int(r[name]) for r in rows]
    return out


def read_test_log(path: Path) -> list[bytes]:
    """Board bytes of the data lines (``index<TAB>b'hex'``) of an old DAQ log."""
    data = []
    for line in path.read_text().splitlines():
        index, sep, rest = line.partition("\t")
        if not sep or not index.strip().isdigit() or not rest.startswith("b'"):
            continue  # a configuration line
        data.append(bytes.fromhex(rest[2:].rstrip("'")))
    return data


def make_record(data: bytes, readout_id: int, timestamp: int = 0) -> bytes:
    """A readout record (docs/format.md section 1) built by hand."""
    return struct.pack("<3sIQI", b"\xfe\xdc\xba", readout_id, timestamp, len(data)) + data


# --------------------------------------------------------------------------
# The reference path: one readout at a time, chaining extra bytes
# --------------------------------------------------------------------------


def decode_chained(records: Iterable[bytes]) -> tuple[np.ndarray, list[DecodingFlag]]:
    """Decode records one by one with :meth:`AstroPix4Readout.decode`.

    Each readout is handed the previous readout's extra bytes when its id is
    the previous id + 1; records that cannot be parsed are skipped (the next
    readout then chains with the last parsed one). Returns the hits and the
    flags of every parsed readout.
    """
    hits = []
    flags = []
    for readout, _extra, readout_hits in iter_chained(records):
        hits.extend(readout_hits)
        flags.append(readout.decoding_status())
    return hits_to_array(hits), flags


def iter_chained(records: Iterable[bytes]):
    """Yield ``(readout, extra bytes handed to it, its hits)`` as :func:`decode_chained` decodes."""
    prev_id: int | None = None
    prev_extra: bytes | None = None
    for record in records:
        try:
            readout = AstroPix4Readout.from_bytes(record)
        except MalformedReadoutError:
            continue
        extra = prev_extra if prev_id is not None and readout.readout_id == prev_id + 1 else None
        yield readout, extra, readout.decode(extra)
        prev_id = readout.readout_id
        prev_extra = readout.extra_bytes()


def assert_hits_equal(got: np.ndarray, expected: np.ndarray, what: str = "hits") -> None:
    """Assert two HIT_DTYPE arrays are equal field for field, in order.

    The failure message says which field differs first, and whether the two
    hold the same hits in a different order.
    """
    assert got.dtype == expected.dtype
    if len(got) == len(expected) and np.array_equal(got, expected):
        return
    if len(got) != len(expected):
        pytest.fail(f"{what}: {len(got)} hits, expected {len(expected)}")
    diff = np.flatnonzero(got != expected)
    first = int(diff[0])
    fields = [n for n in HIT_DTYPE.names if got[n][first] != expected[n][first]]
    same_set = sorted(got.tolist()) == sorted(expected.tolist())
    pytest.fail(
        f"{what}: {len(diff)} of {len(got)} hits differ; first at index {first} in {fields}: "
        f"got {got[first]}, expected {expected[first]}"
        + ("; the same hits, in a different order" if same_set else "")
    )


def flag_counts(flags: Sequence[DecodingFlag]) -> np.ndarray:
    """How many readouts raised each flag bit (as BatchDecoder.flag_counts)."""
    counts = np.zeros(8, dtype=np.int64)
    for f in flags:
        for k in range(8):
            if int(f) >> k & 1:
                counts[k] += 1
    return counts


def offline_tot_counts(tots: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """TOT counts by the offline binning rule (docs/format.md section 8), underflow first, overflow last.

    Bins are half-open ``[e_i, e_i+1)`` except the last, which also holds its
    right edge (numpy's ``histogram`` rule); only values strictly above the
    last edge are overflow. Random hit words do give a TOT of exactly 500 us.
    """
    edges = np.asarray(edges, dtype=np.float64)
    tots = np.asarray(tots, dtype=np.float64)
    index = np.searchsorted(edges, tots, side="right")
    index[tots == edges[-1]] = len(edges) - 1
    return np.bincount(index, minlength=len(edges) + 1).astype(np.int64)


#: The threads a monitor (its engine and listener) runs.
MONITOR_THREADS = ("astropix-monitor-listener", "astropix-monitor-processing", "astropix-listener")


def monitor_threads() -> list[str]:
    """Names of the monitor threads alive now."""
    import threading

    return [t.name for t in threading.enumerate() if t.name in MONITOR_THREADS]


@pytest.fixture
def monitor():
    """An AstroPix 4 monitor on an OS-chosen port, closed after the test with no thread left."""
    from astropix_nbmonitor.monitor import AstroPix4SimpleMonitor

    mon = AstroPix4SimpleMonitor(port=0)
    yield mon
    mon.close()
    assert monitor_threads() == []


def wait_for(predicate, timeout: float = 20.0, what: str = "condition", poll: float = 0.005) -> None:
    """Wait until ``predicate()`` is true; fail the test after ``timeout`` s (a limit, never a measure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def send_paced(port: int, records: Iterable[bytes], group: str = "127.0.0.1", burst: int = 100) -> int:
    """Send records from a fresh socket in small bursts, so that loopback drops none; return the count."""
    from astropix_nbmonitor.sock import MulticastSender

    count = 0
    with MulticastSender(group, port, ttl=1) as sender:
        for record in records:
            sender.send_data(record)
            count += 1
            if count % burst == 0:
                time.sleep(0.0005)
    return count


def socket_inodes() -> set[str]:
    """The sockets this process holds open (from /proc/self/fd)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


@pytest.fixture
def no_leaks():
    """The test leaves no thread and no socket behind."""
    threads = set(threading.enumerate())
    sockets = socket_inodes()
    yield
    assert set(threading.enumerate()) <= threads
    assert socket_inodes() <= sockets


@pytest.fixture
def launch(tmp_path):
    """Start ``astropix-nbmonitor`` commands with isolated Jupyter state; kill what is left after."""
    from _jupyter_env import MARK_VAR, LaunchedCommand, cli_command, isolated_env, kill_marked_processes

    started: list[tuple[LaunchedCommand, str]] = []

    def _launch(*args: str, **env_extra: str) -> tuple[LaunchedCommand, dict[str, str]]:
        env = isolated_env(tmp_path / "state", **env_extra)
        cmd = LaunchedCommand(
            cli_command(*args), env=env, cwd=tmp_path, log=tmp_path / f"launcher-{len(started)}.log"
        )
        started.append((cmd, env[MARK_VAR]))
        return cmd, env

    yield _launch
    for cmd, mark in started:
        if cmd.proc.poll() is None:
            cmd.stop(signal.SIGKILL)
        kill_marked_processes(mark)
