"""Tests of astropix_nbmonitor.sim: the synthetic source and its ground truth."""

from __future__ import annotations

import itertools
import struct

import numpy as np
import pytest
from conftest import assert_hits_equal, decode_chained, flag_counts
from hypothesis import given, settings
from hypothesis import strategies as st

from astropix_nbmonitor.fmt import HIT_DTYPE, AstroPix4Hit, AstroPix4Readout, BatchDecoder, ChainedDecoder, DecodingFlag
from astropix_nbmonitor.sim import VALID_CHIP_IDS, AstroPix4Simulator, Faults, SimulatedRun, encode_hits

F = DecodingFlag
RAW_FIELDS = (
    "chip_id",
    "payload",
    "row",
    "column",
    "ts_neg1",
    "ts_coarse1",
    "ts_fine1",
    "ts_tdc1",
    "ts_neg2",
    "ts_coarse2",
    "ts_fine2",
    "ts_tdc2",
)
ALL_FAULTS = {
    "split": 0.3,
    "ff_padding": 0.3,
    "trailing_ff": 0.3,
    "truncated": 0.05,
    "garbled": 0.05,
    "skip_ids": 0.05,
    "out_of_matrix": 0.1,
    "empty": 0.1,
}


def parse(record: bytes) -> tuple[int, int, bytes]:
    _, rid, ts, length = struct.unpack_from("<3sIQI", record)
    assert len(record) == 19 + length
    return rid, ts, record[19:]


def run_chunks(
    sim: AstroPix4Simulator, sizes: list[int]
) -> tuple[list[bytes], np.ndarray, frozenset[int], frozenset[int]]:
    """Several generate() calls as one stream: records, truth, unreliable ids, empty ids."""
    runs = [sim.generate(n) for n in sizes]
    records = [r for run in runs for r in run.records]
    truth = np.concatenate([np.zeros(0, dtype=HIT_DTYPE), *[run.truth for run in runs]])
    unreliable = frozenset().union(*[run.unreliable for run in runs])
    empty = frozenset().union(*[run.empty for run in runs])
    return records, truth, unreliable, empty


def reliable(hits: np.ndarray, unreliable: frozenset[int]) -> np.ndarray:
    return SimulatedRun(records=[], readouts=[], truth=hits, unreliable=unreliable).select_reliable(hits)


# --------------------------------------------------------------------------
# Ground truth == what both decoding paths find
# --------------------------------------------------------------------------

fault_mixes = st.fixed_dictionaries(
    {},
    optional={
        "split": st.sampled_from([0.0, 0.2, 1.0]),
        "ff_padding": st.sampled_from([0.0, 0.3, 1.0]),
        "trailing_ff": st.sampled_from([0.0, 0.5]),
        "truncated": st.sampled_from([0.0, 0.1, 0.5]),
        "garbled": st.sampled_from([0.0, 0.1, 0.5]),
        "skip_ids": st.sampled_from([0.0, 0.1, 0.5]),
        "out_of_matrix": st.sampled_from([0.0, 0.2]),
        "empty": st.sampled_from([0.0, 0.3, 1.0]),
    },
)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    faults=fault_mixes,
    hits=st.sampled_from([1.0, 1.2, 3.0, 12.0]),
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=4),
    chip_ids=st.sampled_from([(0,), (0, 1, 2, 3), (5, 17, 30)]),
)
def test_simulated_streams_decode_to_their_truth(
    seed: int, faults: dict, hits: float, sizes: list[int], chip_ids: tuple[int, ...]
) -> None:
    sim = AstroPix4Simulator(
        seed=seed, hits_per_readout=hits, faults=faults, chip_ids=chip_ids, noisy_pixels=[(3, 4)], noisy_rate=0.2
    )
    records, truth, unreliable, empty = run_chunks(sim, sizes)
    per_readout, flags = decode_chained(records)
    assert len(flags) == len(records)
    assert_hits_equal(reliable(per_readout, unreliable), truth, f"per-readout path, {faults}")
    decoder = BatchDecoder()
    batch = np.concatenate([np.zeros(0, dtype=HIT_DTYPE), decoder.decode(records)])
    assert_hits_equal(reliable(batch, unreliable), truth, f"decode_batch, {faults}")
    # Empty readouts: the truth counts what both decoders count.
    chained = ChainedDecoder(AstroPix4Readout)
    chained.decode(records)
    assert decoder.num_empty == chained.num_empty == len(empty)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sizes=st.lists(st.integers(1, 30), min_size=2, max_size=5))
def test_batch_decoder_across_generate_calls(seed: int, sizes: list[int]) -> None:
    # One BatchDecoder fed chunk by chunk, as a monitor would be.
    sim = AstroPix4Simulator(seed=seed, hits_per_readout=2.0, faults={"split": 0.5, "skip_ids": 0.1})
    decoder = BatchDecoder()
    got, truths = [], []
    for n in sizes:
        run = sim.generate(n)
        got.append(decoder.decode(run.records))
        truths.append(run.truth)
    assert_hits_equal(np.concatenate(got), np.concatenate(truths), "chunked decode_batch")


def test_healthy_stream_has_no_flags() -> None:
    run = AstroPix4Simulator(seed=1, hits_per_readout=3.0, chip_ids=(0, 7)).generate(2000)
    hits, flags = decode_chained(run.records)
    assert set(flags) == {F.NONE}
    assert_hits_equal(hits, run.truth)
    assert not run.damaged and not run.unreliable and run.lost == 0 and run.num_split == 0
    assert len(run.truth) > 5000
    for record in run.records:
        data = parse(record)[2]
        assert data.startswith(b"\xbc\xbc")
        assert data.endswith(b"\xbc\xbc")
        assert not data.endswith(b"\xff")


def test_split_hits_are_recovered_in_the_second_readout() -> None:
    sim = AstroPix4Simulator(seed=2, hits_per_readout=1.0, faults={"split": 1.0})
    run = sim.generate(500)
    hits, flags = decode_chained(run.records)
    assert_hits_equal(hits, run.truth)
    matched = [i for i, f in enumerate(flags) if f & F.ORPHAN_BYTES_MATCHED]
    assert len(matched) == run.num_split > 300
    allowed = {F.NONE, F.VALID_EXTRA_BYTES, F.ORPHAN_BYTES_MATCHED, F.VALID_EXTRA_BYTES | F.ORPHAN_BYTES_MATCHED}
    assert set(flags) <= allowed
    # The recovered hit is the first hit of the second readout.
    first = {(h["readout_id"], h["decoding_order"]) for h in run.truth}
    for i in matched:
        assert (run.readouts[i].readout_id, 0) in first
    # Split hits are cut inside the hit: readouts ending with 1..7 bytes of a hit.
    ends = [len(run.readouts[i - 1].extra_bytes() or b"") for i in matched]
    assert set(ends) <= set(range(1, 8)) and len(set(ends)) > 3


def test_split_at_the_end_of_a_chunk_continues_in_the_next() -> None:
    sim = AstroPix4Simulator(seed=3, hits_per_readout=2.0, faults={"split": 1.0})
    runs = [sim.generate(1) for _ in range(50)]
    records = [run.records[0] for run in runs]
    assert [parse(r)[0] for r in records] == list(range(50))
    hits, flags = decode_chained(records)
    assert sum(bool(f & F.ORPHAN_BYTES_MATCHED) for f in flags) > 30
    assert_hits_equal(hits, np.concatenate([run.truth for run in runs]))
    # Truth of a chunk holds the hit split at the end of the previous chunk.
    assert sum(run.num_split for run in runs) > 30


def test_split_hit_lost_with_the_next_readout() -> None:
    sim = AstroPix4Simulator(seed=4, hits_per_readout=1.0, faults={"split": 1.0, "skip_ids": 1.0})
    run = sim.generate(200)
    assert run.num_split == 0
    hits, flags = decode_chained(run.records)
    assert_hits_equal(hits, run.truth)
    assert not any(f & F.ORPHAN_BYTES_MATCHED for f in flags)
    # Every readout with a hit ended with a partial hit that never got completed.
    assert sum(bool(f & F.VALID_EXTRA_BYTES) for f in flags) > 100


def test_damaged_readouts_and_the_next_are_unreliable() -> None:
    sim = AstroPix4Simulator(seed=5, hits_per_readout=2.0, faults={"truncated": 0.2, "garbled": 0.2})
    runs = [sim.generate(100), sim.generate(100)]
    damaged = runs[0].damaged | runs[1].damaged
    unreliable = runs[0].unreliable | runs[1].unreliable
    assert 40 < len(damaged) < 120
    assert unreliable == damaged | {d + 1 for d in damaged}
    for run in runs:
        assert run.damaged <= set(run.readout_ids().tolist())
        assert not np.isin(run.truth["readout_id"], list(run.unreliable)).any()
        assert len(run.truth) > 50
    # Within a chunk, the damage is the only difference from an undamaged
    # twin: the other records are byte for byte the same.
    twin = AstroPix4Simulator(seed=5, hits_per_readout=2.0).generate(100)
    same = [a == b for a, b in zip(runs[0].records, twin.records)]
    assert all(same[i] for i in range(100) if i not in runs[0].damaged)
    assert sum(not same[i] for i in runs[0].damaged) >= 0.9 * len(runs[0].damaged)
    assert all(len(runs[0].records[i]) <= len(twin.records[i]) for i in runs[0].damaged)
    twin_truth = reliable(twin.truth, runs[0].unreliable)
    assert_hits_equal(runs[0].truth, twin_truth)


def test_lost_readouts() -> None:
    run = AstroPix4Simulator(seed=6, faults={"skip_ids": 0.2}).generate(1000)
    ids = run.readout_ids()
    steps = np.diff(ids)
    assert (steps >= 1).all() and (steps <= 4).all()
    assert run.lost == int((steps - 1).sum()) > 200
    assert ids[0] == 0
    assert_hits_equal(decode_chained(run.records)[0], run.truth)


def test_out_of_matrix_hits() -> None:
    run = AstroPix4Simulator(seed=7, hits_per_readout=2.0, faults={"out_of_matrix": 0.3}).generate(1000)
    outside = run.truth["column"] >= 16
    assert run.num_out_of_matrix == int(outside.sum()) > 200
    assert (run.truth["column"] <= 31).all()
    assert_hits_equal(decode_chained(run.records)[0], run.truth)
    inside = AstroPix4Simulator(seed=7, hits_per_readout=2.0).generate(1000)
    assert inside.num_out_of_matrix == 0
    assert (inside.truth["column"] < 16).all()


def test_ff_padding_between_hits_and_at_the_end() -> None:
    sim = AstroPix4Simulator(seed=8, hits_per_readout=4.0, faults={"ff_padding": 1.0, "trailing_ff": 1.0})
    run = sim.generate(300)
    inner = sum(b"\xff" in r.data() for r in run.readouts)
    assert inner > 100  # ff left between hits after the trailing ff were stripped
    assert all(parse(rec)[2].endswith(b"\xff") for rec in run.records)
    hits, flags = decode_chained(run.records)
    assert set(flags) == {F.NONE}
    assert_hits_equal(hits, run.truth)


# --------------------------------------------------------------------------
# Empty readouts only when asked (docs/format.md section 9)
# --------------------------------------------------------------------------


def test_default_stream_has_no_empty_readout() -> None:
    run = AstroPix4Simulator(seed=18).generate(5000)
    per_readout = np.bincount(run.truth["readout_id"].astype(np.int64), minlength=5000)
    assert per_readout.tolist() == [1] * 5000  # the default: exactly one hit in every readout
    assert run.num_empty == 0 and run.empty == frozenset()
    decoder = BatchDecoder()
    decoder.decode(run.records)
    assert decoder.num_empty == 0
    assert all(r.data().strip(b"\xbc\xff") for r in run.readouts)


@pytest.mark.parametrize("mean", [1.5, 3.0])
def test_hits_per_readout_is_one_plus_poisson(mean: float) -> None:
    n = 20000
    run = AstroPix4Simulator(seed=19, hits_per_readout=mean).generate(n)
    per_readout = np.bincount(run.truth["readout_id"].astype(np.int64), minlength=n)
    assert per_readout.min() == 1
    assert abs(per_readout.mean() - mean) < 0.03 * mean
    # 1 + Poisson(mean - 1): P(one hit) = exp(-(mean - 1)).
    assert abs((per_readout == 1).mean() - np.exp(-(mean - 1))) < 0.015


def test_empty_fault_makes_idle_only_readouts() -> None:
    sim = AstroPix4Simulator(seed=20, hits_per_readout=2.0, faults={"empty": 0.3, "trailing_ff": 0.2})
    run = sim.generate(3000)
    assert 800 < run.num_empty < 1000
    for readout in run.readouts:
        is_empty = readout.readout_id in run.empty
        assert is_empty == (readout.data().strip(b"\xbc\xff") == b"")
    lengths = {len(r.data()) for r in run.readouts if r.readout_id in run.empty}
    assert 0 in lengths and len(lengths) > 3  # no data at all, or a few bc bytes
    assert not np.isin(run.truth["readout_id"], list(run.empty)).any()
    hits, flags = decode_chained(run.records)
    assert_hits_equal(hits, run.truth)
    assert set(flags) == {F.NONE}
    for decoder in (BatchDecoder(), ChainedDecoder(AstroPix4Readout)):
        decoder.decode(run.records)
        assert decoder.num_empty == run.num_empty
        assert decoder.flag_counts.tolist() == [0] * 8


def test_readout_after_a_split_is_never_empty() -> None:
    sim = AstroPix4Simulator(seed=21, hits_per_readout=1.0, faults={"split": 0.5, "empty": 0.5})
    runs = [sim.generate(n) for n in (300, 1, 1, 200)]
    records = [r for run in runs for r in run.records]
    truth = np.concatenate([run.truth for run in runs])
    hits, flags = decode_chained(records)
    assert_hits_equal(hits, truth)
    matched = sum(bool(f & F.ORPHAN_BYTES_MATCHED) for f in flags)
    assert matched == sum(run.num_split for run in runs) > 50
    assert sum(run.num_empty for run in runs) > 100
    decoder = BatchDecoder()
    decoder.decode(records)
    assert decoder.num_empty == sum(run.num_empty for run in runs)
    assert decoder.flag_counts.tolist() == flag_counts(flags).tolist()


def test_hits_per_readout_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        AstroPix4Simulator(hits_per_readout=0.5)


# --------------------------------------------------------------------------
# Determinism and continuity
# --------------------------------------------------------------------------


def test_same_seed_same_bytes() -> None:
    def make(seed: int) -> list[bytes]:
        sim = AstroPix4Simulator(seed=seed, hits_per_readout=2.0, faults=ALL_FAULTS, chip_ids=(0, 1))
        return sim.generate(300).records + sim.generate(50).records

    assert make(42) == make(42)
    assert make(42) != make(43)


def test_ids_and_timestamps_continue_across_calls() -> None:
    sim = AstroPix4Simulator(seed=9, start_id=1000, start_timestamp=5_000_000_000, rate_hz=250.0)
    records = [r for n in (3, 0, 10, 1, 7) for r in sim.generate(n).records]
    parsed = [parse(r) for r in records]
    assert [p[0] for p in parsed] == list(range(1000, 1021))
    assert [p[1] for p in parsed] == [5_000_000_000 + 4_000_000 * i for i in range(21)]
    assert sim.next_id == 1021


def test_default_timestamps_are_fixed() -> None:
    a = AstroPix4Simulator(seed=1).generate(2).readouts
    assert [r.timestamp for r in a] == [AstroPix4Simulator.DEFAULT_START_TIMESTAMP + k * 1_000_000 for k in (0, 1)]


def test_iter_records() -> None:
    sim = AstroPix4Simulator(seed=10, hits_per_readout=1.0, faults={"split": 0.5})
    records = list(sim.iter_records(25, chunk_size=7))
    assert [parse(r)[0] for r in records] == list(range(25))
    endless = sim.iter_records(chunk_size=4)
    more = list(itertools.islice(endless, 10))
    assert [parse(r)[0] for r in more] == list(range(25, 35))
    hits, _ = decode_chained(records + more)
    assert len(hits) > 0
    with pytest.raises(ValueError, match="chunk_size"):
        next(sim.iter_records(chunk_size=0))


# --------------------------------------------------------------------------
# The physics-ish model
# --------------------------------------------------------------------------


def test_beam_spot_background_and_rows() -> None:
    run = AstroPix4Simulator(seed=11, hits_per_readout=5.0).generate(4000)
    t = run.truth
    assert (t["row"] < 32).all() and (t["column"] < 16).all()
    assert abs(t["row"].mean() - 17.0) < 0.5
    assert abs(t["column"].mean() - 8.0) < 0.3
    near = (np.abs(t["row"].astype(int) - 17) <= 5) & (np.abs(t["column"].astype(int) - 8) <= 3)
    assert 0.4 < near.mean() < 0.8
    hitmap = np.zeros((32, 16), dtype=int)
    np.add.at(hitmap, (t["row"], t["column"]), 1)
    assert (hitmap > 0).mean() > 0.95  # the uniform background reaches everywhere


def test_tot_spectrum() -> None:
    tot = AstroPix4Simulator(seed=12, hits_per_readout=5.0).generate(10000).truth["tot_us"]
    assert len(tot) > 40000
    assert ((tot >= 10) & (tot <= 300)).mean() > 0.9
    assert (tot > 500).sum() > 50
    assert (tot > 0).all() and (tot < 6553.6).all()
    cycles = tot * 20
    assert np.array_equal(cycles, np.rint(cycles))  # 0.05 us steps
    peak = np.bincount((tot // 10).astype(int)).argmax() * 10
    assert 60 <= peak <= 110


def test_noisy_pixels() -> None:
    sim = AstroPix4Simulator(seed=13, hits_per_readout=1.0, noisy_pixels=[(0, 0), (30, 15)], noisy_rate=0.5)
    t = sim.generate(3000).truth
    for r, c in [(0, 0), (30, 15)]:
        n = int(((t["row"] == r) & (t["column"] == c)).sum())
        assert 1300 < n < 1700
    hitmap = np.zeros((32, 16), dtype=int)
    np.add.at(hitmap, (t["row"], t["column"]), 1)
    assert np.median(hitmap) < 20


def test_fixed_hits_dense() -> None:
    run = AstroPix4Simulator(seed=14, hits_per_readout=32, fixed_hits=True).generate(200)
    per = np.bincount(run.truth["readout_id"].astype(int), minlength=200)
    assert (per == 32).all()
    assert_hits_equal(decode_chained(run.records)[0], run.truth)


def test_chip_ids() -> None:
    run = AstroPix4Simulator(seed=15, hits_per_readout=3.0, chip_ids=VALID_CHIP_IDS).generate(2000)
    assert set(run.truth["chip_id"].tolist()) == set(range(31))
    assert_hits_equal(decode_chained(run.records)[0], run.truth)
    with pytest.raises(ValueError, match="chip id 31"):
        AstroPix4Simulator(chip_ids=(0, 31))
    with pytest.raises(ValueError, match="empty"):
        AstroPix4Simulator(chip_ids=())


def test_every_valid_chip_id_gives_a_start_byte() -> None:
    zero = {"row": 0, "column": 0, "ts_coarse1": 0, "ts_fine1": 0, "ts_coarse2": 0, "ts_fine2": 0}
    starts = [AstroPix4Hit.encode(chip_id=c, payload=7, **zero)[0] for c in range(32)]
    assert [0xE0 <= b <= 0xFE for b in starts] == [c in VALID_CHIP_IDS for c in range(32)]


def test_encode_hits_equals_hit_encode() -> None:
    sim = AstroPix4Simulator(seed=16, hits_per_readout=3.0, chip_ids=(0, 9, 30), faults={"out_of_matrix": 0.3})
    run = sim.generate(500)
    words = encode_hits(run.truth)
    for hit, word in zip(run.truth, words):
        fields = {name: int(hit[name]) for name in RAW_FIELDS}
        assert word.tobytes() == AstroPix4Hit.encode(**fields)
        decoded = AstroPix4Hit.from_wire(word.tobytes())
        assert decoded.tot_us == hit["tot_us"]
        assert (decoded.ts_dec1, decoded.ts_dec2) == (hit["ts_dec1"], hit["ts_dec2"])


def test_encode_hits_refuses_values_that_do_not_fit() -> None:
    hits = np.zeros(3, dtype=HIT_DTYPE)
    hits["row"] = [0, 40, 1]
    with pytest.raises(ValueError, match="row=40"):
        encode_hits(hits)


def test_truth_matches_record_headers() -> None:
    run = AstroPix4Simulator(seed=17, hits_per_readout=2.0, faults={"split": 0.3}).generate(300)
    headers = {r.readout_id: r.timestamp for r in run.readouts}
    assert all(headers[int(h["readout_id"])] == int(h["timestamp"]) for h in run.truth)
    assert [AstroPix4Readout.from_bytes(r) for r in run.records] == run.readouts
    order = run.truth["readout_id"].astype(np.int64) * 1000 + run.truth["decoding_order"]
    assert (np.diff(order) > 0).all()


# --------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------


def test_faults_coerce_and_validate() -> None:
    assert Faults.coerce(None) == Faults()
    assert Faults.coerce({"split": 0.5}) == Faults(split=0.5)
    f = Faults(garbled=0.1)
    assert Faults.coerce(f) is f
    with pytest.raises(ValueError, match="splitt"):
        Faults.coerce({"splitt": 0.5})
    with pytest.raises(ValueError, match="1.5"):
        Faults(split=1.5)
    with pytest.raises(TypeError):
        Faults.coerce(0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hits_per_readout": -1}, "hits_per_readout"),
        ({"beam_fraction": 2.0}, "beam_fraction"),
        ({"beam_sigma": (0.0, 1.0)}, "beam_sigma"),
        ({"noisy_pixels": [(32, 0)]}, "row=32"),
        ({"rate_hz": 0}, "rate_hz"),
        ({"tot_scale_us": 0}, "TOT"),
        ({"start_id": 2**32}, "start_id"),
    ],
)
def test_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AstroPix4Simulator(**kwargs)


def test_negative_count() -> None:
    with pytest.raises(ValueError, match="-1"):
        AstroPix4Simulator().generate(-1)
