"""Tests of astropix_nbmonitor.fmt and astropix4: records, hits, the offline rules, the decoders."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from conftest import assert_hits_equal, decode_chained, flag_counts, iter_chained, make_record, split_apx
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from astropix_nbmonitor import fmt
from astropix_nbmonitor.astropix4 import layout
from astropix_nbmonitor.fmt import (
    FLAG_NAMES,
    HIT_DTYPE,
    HIT_FIELDS,
    AstroPix4Hit,
    AstroPix4Readout,
    BatchDecoder,
    ChainedDecoder,
    DecodingFlag,
    MalformedReadoutError,
    binary_to_gray,
    decode_batch,
    decoder_for,
    gray_to_binary,
    hits_to_array,
    parse_record,
    reverse_bit_order,
)
from astropix_nbmonitor.sim import AstroPix4Simulator

F = DecodingFlag
START_BYTES = range(0xE0, 0xFF)
#: The worked example of docs/format.md section 4 (from the real data).
EXAMPLE_WIRE = bytes.fromhex("e05042030620d701")

FIELD_WIDTHS = {
    "chip_id": 5,
    "payload": 3,
    "row": 5,
    "column": 5,
    "ts_neg1": 1,
    "ts_coarse1": 14,
    "ts_fine1": 3,
    "ts_tdc1": 5,
    "ts_neg2": 1,
    "ts_coarse2": 14,
    "ts_fine2": 3,
    "ts_tdc2": 5,
}
hit_fields = st.fixed_dictionaries({name: st.integers(0, 2**w - 1) for name, w in FIELD_WIDTHS.items()})
#: Fields of hits the board can send (payload 7, chip id 0..30: a valid start byte).
board_hit_fields = hit_fields.map(lambda d: {**d, "payload": 7, "chip_id": d["chip_id"] % 31})


@st.composite
def board_bytes(draw: st.DrawFn, max_segments: int = 12) -> bytes:
    """Bytes that look like board data, with every kind of damage mixed in."""
    segments = draw(
        st.lists(
            st.one_of(
                st.integers(0, 4).map(lambda k: b"\xbc" * k),
                st.integers(1, 6).map(lambda k: b"\xff" * k),
                board_hit_fields.map(lambda d: AstroPix4Hit.encode(**d)),
                st.tuples(board_hit_fields, st.integers(1, 7)).map(lambda t: AstroPix4Hit.encode(**t[0])[: t[1]]),
                st.tuples(board_hit_fields, st.integers(1, 7)).map(lambda t: AstroPix4Hit.encode(**t[0])[t[1] :]),
                st.binary(max_size=10),
                st.lists(st.sampled_from([0xBC, 0xFF, 0xE0, 0xFE, 0xE5, 0x00, 0x42]), max_size=10).map(bytes),
            ),
            max_size=max_segments,
        )
    )
    return b"".join(segments)


extra_bytes = st.one_of(
    st.none(),
    st.binary(min_size=1, max_size=8),
    st.tuples(board_hit_fields, st.integers(1, 7)).map(lambda t: AstroPix4Hit.encode(**t[0])[: t[1]]),
)


def hit_values(hit: AstroPix4Hit) -> dict[str, int]:
    return {name: getattr(hit, name) for name in FIELD_WIDTHS}


# --------------------------------------------------------------------------
# Hits: the worked example, encode/decode, Gray code
# --------------------------------------------------------------------------


def test_worked_example_every_field() -> None:
    hit = AstroPix4Hit.from_wire(EXAMPLE_WIRE, readout_id=12, timestamp=34, decoding_order=1)
    expected = {
        "chip_id": 0,
        "payload": 7,
        "row": 1,
        "column": 9,
        "ts_neg1": 0,
        "ts_coarse1": 1408,
        "ts_fine1": 6,
        "ts_tdc1": 0,
        "ts_neg2": 0,
        "ts_coarse2": 1259,
        "ts_fine2": 4,
        "ts_tdc2": 0,
        "ts_dec1": 14331,
        "ts_dec2": 14952,
        "tot_us": 31.05,
        "readout_id": 12,
        "timestamp": 34,
        "decoding_order": 1,
    }
    assert hit.as_dict() == expected
    assert list(HIT_FIELDS) == list(expected)


def test_worked_example_encodes_back() -> None:
    fields = hit_values(AstroPix4Hit.from_wire(EXAMPLE_WIRE))
    assert AstroPix4Hit.encode(**fields) == EXAMPLE_WIRE


def test_worked_example_by_hand() -> None:
    # Steps 1-3 of docs/format.md section 4 written out, independently of fmt.
    flipped = bytes(int(f"{b:08b}"[::-1], 2) for b in EXAMPLE_WIRE)
    assert reverse_bit_order(EXAMPLE_WIRE) == flipped
    bits = f"{int.from_bytes(flipped, 'big'):064b}"
    assert int(bits[8:13], 2) == 1  # row
    assert int(bits[13:18], 2) == 9  # column
    assert int(bits[19:33], 2) == 1408  # ts_coarse1


@settings(max_examples=300, deadline=None)
@given(fields=hit_fields, readout_id=st.integers(0, 2**32 - 1), order=st.integers(0, 100))
def test_encode_decode_round_trip(fields: dict[str, int], readout_id: int, order: int) -> None:
    wire = AstroPix4Hit.encode(**fields)
    assert len(wire) == 8
    hit = AstroPix4Hit.from_wire(wire, readout_id, 5, order)
    assert hit_values(hit) == fields
    d1 = gray_to_binary((fields["ts_coarse1"] << 3) + fields["ts_fine1"])
    d2 = gray_to_binary((fields["ts_coarse2"] << 3) + fields["ts_fine2"])
    if d2 < d1:
        d2 += 2**17
    assert (hit.ts_dec1, hit.ts_dec2) == (d1, d2)
    assert hit.tot_us == (d2 - d1) / 20.0
    assert (hit.readout_id, hit.timestamp, hit.decoding_order) == (readout_id, 5, order)
    # The first wire byte is a start byte exactly for payload 7 and chip id < 31.
    assert (wire[0] in START_BYTES) == (fields["payload"] == 7 and fields["chip_id"] < 31)


@pytest.mark.parametrize(("name", "value"), [("row", 32), ("column", -1), ("ts_coarse1", 2**14), ("payload", 8)])
def test_encode_refuses_values_that_do_not_fit(name: str, value: int) -> None:
    fields = {"row": 0, "column": 0, "ts_coarse1": 0, "ts_fine1": 0, "ts_coarse2": 0, "ts_fine2": 0}
    fields[name] = value
    with pytest.raises(ValueError, match=name):
        AstroPix4Hit.encode(**fields)


def test_hit_needs_eight_bytes() -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        AstroPix4Hit(EXAMPLE_WIRE[:7], 0, 0)


def test_gray_code_known_values() -> None:
    assert [binary_to_gray(i) for i in range(8)] == [0, 1, 3, 2, 6, 7, 5, 4]
    assert [gray_to_binary(g) for g in (0, 1, 3, 2, 6, 7, 5, 4)] == list(range(8))


@given(st.integers(0, 2**40))
def test_gray_code_round_trip(value: int) -> None:
    gray = binary_to_gray(value)
    assert gray_to_binary(gray) == value
    # Consecutive values differ by exactly one bit in Gray code.
    assert bin(gray ^ binary_to_gray(value + 1)).count("1") == 1


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------


@given(data=st.binary(max_size=40), readout_id=st.integers(0, 2**32 - 1), ts=st.integers(0, 2**64 - 1))
def test_record_round_trip(data: bytes, readout_id: int, ts: int) -> None:
    data = data.rstrip(b"\xff")
    record = make_record(data, readout_id, ts)
    readout = AstroPix4Readout.from_bytes(record)
    assert (readout.readout_id, readout.timestamp, readout.data()) == (readout_id, ts, data)
    assert readout.to_bytes() == record
    assert parse_record(record) == (readout_id, ts, data)


@given(record=st.binary(max_size=18))
def test_short_record_raises(record: bytes) -> None:
    with pytest.raises(MalformedReadoutError) as info:
        AstroPix4Readout.from_bytes(record)
    assert info.value.reason == "short"
    assert info.value.offset == len(record)
    assert isinstance(info.value, ValueError)


@given(head=st.binary(min_size=3, max_size=3), data=st.binary(max_size=20))
def test_wrong_record_header_raises(head: bytes, data: bytes) -> None:
    assume(head != b"\xfe\xdc\xba")
    record = head + make_record(data, 1)[3:]
    with pytest.raises(MalformedReadoutError) as info:
        AstroPix4Readout.from_bytes(record)
    assert (info.value.reason, info.value.offset) == ("header", 0)
    assert head.hex() in str(info.value)


@given(data=st.binary(max_size=20), length=st.integers(0, 2**32 - 1))
def test_wrong_record_length_raises(data: bytes, length: int) -> None:
    assume(length != len(data))
    record = struct.pack("<3sIQI", b"\xfe\xdc\xba", 3, 4, length) + data
    with pytest.raises(MalformedReadoutError) as info:
        AstroPix4Readout.from_bytes(record)
    assert (info.value.reason, info.value.offset) == ("length", 15)
    assert str(length) in str(info.value)


@settings(max_examples=200, deadline=None)
@given(data=board_bytes(), pad=st.integers(1, 40), extra=extra_bytes)
def test_trailing_ff_is_accepted_and_stripped(data: bytes, pad: int, extra: bytes | None) -> None:
    padded = AstroPix4Readout.from_bytes(make_record(data + b"\xff" * pad, 7, 8))
    clean = AstroPix4Readout.from_bytes(make_record(data.rstrip(b"\xff"), 7, 8))
    assert padded.data() == data.rstrip(b"\xff")
    assert padded.to_bytes() == clean.to_bytes()
    assert padded.decode(extra) == clean.decode(extra)
    assert padded.decoding_status() == clean.decoding_status()
    assert padded.extra_bytes() == clean.extra_bytes()
    alone = AstroPix4Readout.from_bytes(make_record(data, 7, 8)).decode()
    assert_hits_equal(decode_batch([make_record(data + b"\xff" * pad, 7, 8)]), hits_to_array(alone))


# --------------------------------------------------------------------------
# The offline rules: real data
# --------------------------------------------------------------------------


def test_real_file_per_readout_matches_offline_csv(real_records: list[bytes], real_csv_hits: np.ndarray) -> None:
    assert len(real_records) == 775
    hits, flags = decode_chained(real_records)
    assert len(hits) == 776 == len(real_csv_hits)
    assert all(f == F.NONE for f in flags)
    for name in HIT_FIELDS:
        np.testing.assert_array_equal(hits[name], real_csv_hits[name], err_msg=name)
    assert_hits_equal(hits, real_csv_hits)
    per_readout = np.bincount(hits["readout_id"].astype(np.int64))
    assert np.bincount(per_readout).tolist() == [0, 774, 1]  # 774 readouts with one hit, one with two
    assert all(AstroPix4Readout.from_bytes(r).data().endswith(b"\xbc\xbc") for r in real_records)


def test_real_file_decode_batch_matches_offline_csv(real_records: list[bytes], real_csv_hits: np.ndarray) -> None:
    decoder = BatchDecoder()
    hits = decoder.decode(real_records)
    assert_hits_equal(hits, real_csv_hits, "decode_batch on the real file")
    assert decoder.num_readouts == 775
    assert decoder.num_hits == 776
    assert decoder.flag_counts.tolist() == [0] * 8


def test_real_file_header(real_apx_path) -> None:
    header, _ = split_apx(real_apx_path.read_bytes())
    assert json.loads(header)["readout_uid"] == AstroPix4Readout.uid() == 4000


# --------------------------------------------------------------------------
# The offline rules: the hand-made difficult cases (docs/format.md section 7)
# --------------------------------------------------------------------------

TEST_LOG_TABLE = [
    ([(0, 1, 9, 31.05), (1, 1, 10, 43.4)], F.NONE),
    ([(0, 1, 9, 31.05), (1, 1, 10, 43.4)], F.NONE),
    ([(0, 1, 9, 31.05)], F.VALID_EXTRA_BYTES),
    ([(0, 1, 9, 31.05), (1, 1, 10, 43.4)], F.ORPHAN_BYTES_MATCHED),
    ([(0, 1, 10, 43.4)], F.INCOMPLETE_HIT_DROPPED),
    ([(0, 1, 9, 6091.3)], F.NONE),
    ([(0, 1, 9, 31.05), (1, 1, 10, 43.4)], F.NONE),
]


def test_test_log_table(test_log_data: list[bytes]) -> None:
    assert len(test_log_data) == 7
    extra = None
    for i, (data, (expected, flags)) in enumerate(zip(test_log_data, TEST_LOG_TABLE)):
        readout = AstroPix4Readout(data, i, 1000 + i)
        hits = readout.decode(extra)
        got = [(h.decoding_order, h.row, h.column, h.tot_us) for h in hits]
        assert got == expected, f"readout {i}"
        assert readout.decoding_status() == flags, f"readout {i}"
        assert all((h.readout_id, h.timestamp) == (i, 1000 + i) for h in hits)
        extra = readout.extra_bytes()
        assert (extra is not None) == (i == 2)


def test_test_log_split_hit_is_the_whole_hit(test_log_data: list[bytes]) -> None:
    r2 = AstroPix4Readout(test_log_data[2], 2, 0)
    r2.decode()
    r3 = AstroPix4Readout(test_log_data[3], 3, 0)
    recovered = r3.decode(r2.extra_bytes())[0]
    assert r2.extra_bytes() + bytes.fromhex("d701") == EXAMPLE_WIRE
    assert recovered == AstroPix4Hit.from_wire(EXAMPLE_WIRE, 3, 0, 0)
    # Without the previous readout's extra bytes the orphan bytes are not used.
    alone = AstroPix4Readout(test_log_data[3], 3, 0)
    assert [h.column for h in alone.decode()] == [10]
    assert alone.decoding_status() == F.ORPHAN_BYTES_NOT_USED


def test_test_log_decode_batch(test_log_data: list[bytes]) -> None:
    records = [make_record(d, i, 1000 + i) for i, d in enumerate(test_log_data)]
    expected, flags = decode_chained(records)
    assert len(expected) == 11
    decoder = BatchDecoder()
    assert_hits_equal(decoder.decode(records), expected, "decode_batch on test.log")
    assert decoder.num_recovered == 1
    assert decoder.flag_counts.tolist() == flag_counts(flags).tolist()


# --------------------------------------------------------------------------
# Never raise, never a hit from fewer than 8 bytes
# --------------------------------------------------------------------------


def check_decode_invariants(data: bytes, extra: bytes | None) -> None:
    readout = AstroPix4Readout(data, 42, 43)
    hits = readout.decode(extra)
    flags = readout.decoding_status()
    stripped = readout.data()
    assert not flags & F.NOT_ALL_BYTES_VISITED
    assert len(hits) * 8 <= len(stripped) + len(extra or b"")
    for i, hit in enumerate(hits):
        assert (hit.readout_id, hit.timestamp, hit.decoding_order) == (42, 43, i)
        wire = AstroPix4Hit.encode(**hit_values(hit))
        if i == 0 and flags & F.ORPHAN_BYTES_MATCHED:
            assert extra is not None and wire.startswith(extra)
            assert wire[len(extra) :] in stripped
        else:
            assert wire[0] in START_BYTES
            assert wire in stripped
    if flags & F.ORPHAN_BYTES_MATCHED:
        assert extra is not None
    left = readout.extra_bytes()
    if left is not None:
        assert 1 <= len(left) <= 8
        assert left[0] in START_BYTES
        assert stripped.endswith(left)
    # Decoding again gives the same.
    again = AstroPix4Readout(data, 42, 43)
    assert again.decode(extra) == hits
    assert (again.decoding_status(), again.extra_bytes()) == (flags, left)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=80), extra=extra_bytes)
def test_random_bytes_never_raise(data: bytes, extra: bytes | None) -> None:
    check_decode_invariants(data, extra)


@settings(max_examples=500, deadline=None)
@given(data=board_bytes(), extra=extra_bytes)
def test_board_like_bytes_never_raise(data: bytes, extra: bytes | None) -> None:
    check_decode_invariants(data, extra)


@pytest.mark.parametrize(
    "data",
    [
        b"\x12\x34",  # orphan bytes and no start byte after them
        b"\xbc\x00\xe0\x01\x02",  # fewer than 8 bytes after the orphan bytes
        b"\xe0\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\xe0\x01\xbc",  # dropped bytes, short word after
        b"\xe0\x01\x02\x03\x04\x05\x06\xe0\x00",  # shifted over a truncated hit past the end
        b"\xe0" * 9,
    ],
)
def test_malformed_readouts_are_flagged_not_raised(data: bytes) -> None:
    check_decode_invariants(data, None)
    check_decode_invariants(data, b"\xe0\x01")


# --------------------------------------------------------------------------
# decode_batch == the per-readout chained path
# --------------------------------------------------------------------------


def test_decode_batch_keeps_readout_order() -> None:
    # Two readouts of "simple" hits only (the vectorised path): the hits must
    # come out readout by readout, not first hits of all readouts first.
    w1 = EXAMPLE_WIRE
    w2 = AstroPix4Hit.encode(row=2, column=3, ts_coarse1=1408, ts_fine1=6, ts_coarse2=1259, ts_fine2=4)
    r0 = make_record(b"\xbc\xbc" + w1 + b"\xbc\xbc" + w2 + b"\xbc\xbc", 0)
    r1 = make_record(b"\xbc\xbc" + w1 + b"\xbc\xbc", 1)
    hits = decode_batch([r0, r1])
    assert hits[["readout_id", "decoding_order", "row"]].tolist() == [(0, 0, 1), (0, 1, 2), (1, 0, 1)]


def check_batch_equals_chained(records: list[bytes], what: str) -> None:
    expected, flags = decode_chained(records)
    decoder = BatchDecoder()
    got = decoder.decode(records)
    assert_hits_equal(got, expected, what)
    assert decoder.num_readouts == len(flags)
    assert decoder.num_hits == len(expected)
    assert decoder.num_malformed_records == len(records) - len(flags)
    assert decoder.flag_counts.tolist() == flag_counts(flags).tolist()
    assert decoder.num_recovered == sum(bool(f & F.ORPHAN_BYTES_MATCHED) for f in flags)
    assert decoder.num_empty == count_empty(records)
    check_decoders_agree(records, what)


def count_empty(records: list[bytes]) -> int:
    """Readouts whose data holds only bc/ff bytes (docs/format.md section 9), from the bytes."""
    return sum(not readout.data().strip(b"\xbc\xff") for readout, _, _ in iter_chained(records))


COUNTERS = ("num_readouts", "num_hits", "num_recovered", "num_empty", "num_malformed", "last_id", "last_extra")


def counters(decoder: ChainedDecoder) -> dict:
    out = {name: getattr(decoder, name) for name in COUNTERS}
    out["flag_counts"] = list(decoder.flag_counts)
    return out


def check_decoders_agree(records: list[bytes], what: str) -> None:
    """ChainedDecoder gives the hits and the counters of BatchDecoder."""
    batch = BatchDecoder()
    expected = batch.decode(records)
    chained = ChainedDecoder(AstroPix4Readout)
    got = chained.decode(records)
    assert all(isinstance(h, AstroPix4Hit) for h in got)
    assert_hits_equal(hits_to_array(got), expected, f"ChainedDecoder, {what}")
    assert counters(chained) == counters(batch), what


def test_decode_batch_equals_chained_on_real_stream(real_records: list[bytes]) -> None:
    check_batch_equals_chained(real_records, "real stream")


def test_decode_batch_on_nothing() -> None:
    assert decode_batch([]).dtype == HIT_DTYPE
    assert len(decode_batch([])) == 0
    assert len(decode_batch(iter([b"junk"]))) == 0


@st.composite
def random_streams(draw: st.DrawFn) -> list[bytes]:
    """Records of board-like bytes; ids consecutive, or random, with gaps."""
    datas = draw(st.lists(board_bytes(max_segments=8), max_size=12))
    kind = draw(st.sampled_from(["consecutive", "random", "mixed"]))
    start = draw(st.integers(0, 2**32 - 64))
    if kind == "consecutive":
        ids = [start + i for i in range(len(datas))]
    elif kind == "random":
        ids = draw(st.lists(st.integers(0, 2**32 - 1), min_size=len(datas), max_size=len(datas)))
    else:
        steps = draw(st.lists(st.sampled_from([1, 1, 1, 2, 0, -1]), min_size=len(datas), max_size=len(datas)))
        ids = [max(0, start + s) for s in np.cumsum(steps).tolist()]
    records = [make_record(d, i, 10 * i) for d, i in zip(datas, ids)]
    # Sometimes a malformed record in the middle (skipped by both paths).
    if records and draw(st.booleans()):
        at = draw(st.integers(0, len(records)))
        junk = draw(st.sampled_from([b"", b"\xfe\xdc", b"\x00" * 19, make_record(b"\xbc", 5)[:-1]]))
        records.insert(at, junk)
    return records


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=random_streams())
def test_decode_batch_equals_chained_on_random_streams(records: list[bytes]) -> None:
    check_batch_equals_chained(records, "random stream")


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    hits=st.sampled_from([1.0, 1.3, 4.0]),
    faults=st.fixed_dictionaries(
        {},
        optional={
            "split": st.floats(0, 1),
            "ff_padding": st.floats(0, 1),
            "trailing_ff": st.floats(0, 1),
            "truncated": st.floats(0, 0.3),
            "garbled": st.floats(0, 0.3),
            "skip_ids": st.floats(0, 0.3),
            "out_of_matrix": st.floats(0, 0.3),
            "empty": st.floats(0, 0.5),
        },
    ),
)
def test_decode_batch_equals_chained_on_simulated_streams(seed: int, hits: float, faults: dict) -> None:
    run = AstroPix4Simulator(seed=seed, hits_per_readout=hits, faults=faults, chip_ids=(0, 1, 30)).generate(60)
    check_batch_equals_chained(run.records, f"simulated stream {faults}")


@settings(max_examples=100, deadline=None)
@given(records=random_streams(), data=st.data())
def test_batch_decoder_in_chunks_equals_one_call(records: list[bytes], data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(records)), max_size=5)))
    whole = BatchDecoder()
    expected = whole.decode(records)
    chunked = BatchDecoder()
    parts = []
    bounds = [0, *cuts, len(records)]
    for a, b in zip(bounds, bounds[1:]):
        parts.append(chunked.decode(records[a:b]))
    got = np.concatenate([np.zeros(0, dtype=HIT_DTYPE), *parts])
    assert_hits_equal(got, expected, f"chunks cut at {cuts}")
    for name in ("num_readouts", "num_hits", "num_recovered", "num_malformed_records"):
        assert getattr(chunked, name) == getattr(whole, name), name
    assert chunked.flag_counts.tolist() == whole.flag_counts.tolist()


def test_batch_decoder_chains_split_hit_across_calls(test_log_data: list[bytes]) -> None:
    records = [make_record(d, 100 + i) for i, d in enumerate(test_log_data)]
    decoder = BatchDecoder()
    first = decoder.decode(records[:3])
    second = decoder.decode(records[3:])
    assert second[0]["readout_id"] == 103
    assert (second[0]["column"], second[0]["tot_us"]) == (9, 31.05)
    assert decoder.num_recovered == 1
    assert_hits_equal(np.concatenate([first, second]), decode_chained(records)[0])
    decoder.reset()
    assert decoder.decode(records[3:4])["column"].tolist() == [10]  # no chaining after reset


# --------------------------------------------------------------------------
# The decoders' common interface: decoder_for, ChainedDecoder, BatchDecoder
# --------------------------------------------------------------------------


class ForeignReadout:
    """A readout class that shares nothing with fmt's bases but the duck-typed methods.

    Stands for the collaboration's own ``astropix_analysis`` readout classes.
    """

    def __init__(self, readout: AstroPix4Readout) -> None:
        self._inner = readout
        self.readout_id = readout.readout_id

    @classmethod
    def from_bytes(cls, record: bytes) -> ForeignReadout:
        return cls(AstroPix4Readout.from_bytes(record))

    def decode(self, extra_bytes: bytes | None = None) -> list[AstroPix4Hit]:
        return self._inner.decode(extra_bytes)

    def extra_bytes(self) -> bytes | None:
        return self._inner.extra_bytes()

    def decoding_status(self) -> DecodingFlag:
        return self._inner.decoding_status()


class SubReadout(AstroPix4Readout):
    """A subclass of AstroPix4Readout (the batch decoder applies to it too)."""


def test_decoder_for_picks_the_batch_decoder_for_astropix4_only() -> None:
    for cls in (AstroPix4Readout, SubReadout):
        decoder = decoder_for(cls)
        assert type(decoder) is BatchDecoder
        assert decoder.readout_class is cls
    other = decoder_for(ForeignReadout)
    assert type(other) is ChainedDecoder
    assert other.readout_class is ForeignReadout
    assert decoder_for(AstroPix4Readout) is not decoder_for(AstroPix4Readout)  # a new one each time


def test_decoders_agree_on_the_real_file(real_records: list[bytes]) -> None:
    check_decoders_agree(real_records, "real file")
    chained = ChainedDecoder(AstroPix4Readout)
    chained.decode(real_records)
    assert (chained.num_readouts, chained.num_hits, chained.num_empty, chained.num_malformed) == (775, 776, 0, 0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), hits=st.sampled_from([1.0, 2.5]), split=st.floats(0.2, 1.0))
def test_decoders_agree_on_simulated_split_hits(seed: int, hits: float, split: float) -> None:
    sim = AstroPix4Simulator(
        seed=seed, hits_per_readout=hits, faults={"split": split, "skip_ids": 0.05, "ff_padding": 0.2, "empty": 0.1}
    )
    records = sim.generate(80).records
    check_decoders_agree(records, f"simulated, split={split}")
    decoder = BatchDecoder()
    decoder.decode(records)
    assert decoder.num_recovered > 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=random_streams())
def test_decoders_agree_on_random_streams(records: list[bytes]) -> None:
    check_decoders_agree(records, "random stream")


def test_chained_decoder_takes_any_readout_class(test_log_data: list[bytes]) -> None:
    records = [make_record(d, 100 + i) for i, d in enumerate(test_log_data)] + [b"junk"]
    decoder = ChainedDecoder(ForeignReadout)
    hits = decoder.decode(records)
    assert_hits_equal(hits_to_array(hits), decode_chained(records)[0])
    assert (decoder.num_readouts, decoder.num_recovered, decoder.num_malformed) == (7, 1, 1)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=random_streams(), data=st.data(), batch=st.booleans())
def test_decode_readout_interleaved_with_decode(records: list[bytes], data: st.DataObject, batch: bool) -> None:
    # Segments of the stream decoded alternately by decode() (records) and
    # decode_readout() (readout objects, as a user's process_readout does):
    # the chaining and the counters are those of one decode() of it all.
    whole = BatchDecoder() if batch else ChainedDecoder(AstroPix4Readout)
    expected = whole.decode(records)
    mixed = BatchDecoder() if batch else ChainedDecoder(AstroPix4Readout)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(records)), max_size=6)))
    bounds = [0, *cuts, len(records)]
    got = []
    skipped = 0
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if k % 2:
            for record in records[a:b]:
                try:
                    readout = AstroPix4Readout.from_bytes(record)
                except MalformedReadoutError:
                    skipped += 1  # decode() would have counted it
                    continue
                got.extend(mixed.decode_readout(readout))
        else:
            hits = mixed.decode(records[a:b])
            got.extend(hits.tolist() if batch else hits)
    if batch:
        expected_rows = expected.tolist()
        got_rows = [tuple(h.attribute_values(HIT_FIELDS)) if isinstance(h, AstroPix4Hit) else h for h in got]
        assert got_rows == expected_rows
    else:
        assert got == expected
    assert mixed.num_malformed + skipped == whole.num_malformed
    assert {**counters(mixed), "num_malformed": 0} == {**counters(whole), "num_malformed": 0}


def test_decode_readout_chains_a_split_hit_after_a_batch(test_log_data: list[bytes]) -> None:
    records = [make_record(d, 100 + i) for i, d in enumerate(test_log_data)]
    decoder = BatchDecoder()
    decoder.decode(records[:3])  # readout 102 ends with the first part of a hit
    assert decoder.last_id == 102 and decoder.last_extra is not None
    hits = decoder.decode_readout(AstroPix4Readout.from_bytes(records[3]))
    assert [(h.decoding_order, h.column, h.tot_us) for h in hits] == [(0, 9, 31.05), (1, 10, 43.4)]
    assert decoder.num_recovered == 1
    # ... and a batch after decode_readout chains on its last readout.
    again = BatchDecoder()
    again.decode(records[:2])
    again.decode_readout(AstroPix4Readout.from_bytes(records[2]))
    assert again.decode(records[3:4])["column"].tolist() == [9, 10]
    assert again.num_recovered == 1


def test_flag_dict_and_reset() -> None:
    records = [make_record(b"\x12\x34\xbc", 0), make_record(b"\xbc\xbc", 1), make_record(b"", 2), b"junk"]
    for decoder in (BatchDecoder(), ChainedDecoder(AstroPix4Readout)):
        decoder.decode(records)
        flags = decoder.flag_dict()
        assert list(flags) == list(FLAG_NAMES)
        assert flags == {**dict.fromkeys(FLAG_NAMES, 0), "ORPHAN_BYTES_NOT_USED": 1, "UNKNOWN_FATAL_ERROR": 1}
        assert (decoder.num_readouts, decoder.num_empty, decoder.num_malformed, decoder.last_id) == (3, 2, 1, 2)
        assert decoder.num_malformed_records == 1
        decoder.reset()
        assert counters(decoder) == counters(ChainedDecoder(AstroPix4Readout))
        assert decoder.last_id is None and decoder.flag_dict() == dict.fromkeys(FLAG_NAMES, 0)


# --------------------------------------------------------------------------
# Empty readouts (docs/format.md section 9)
# --------------------------------------------------------------------------

EMPTY_DATAS = [b"", b"\xbc", b"\xbc" * 9, b"\xff", b"\xbc\xff\xbc", b"\xff\xbc" * 6, b"\xbc\xbc\xff\xff"]


@pytest.mark.parametrize("data", EMPTY_DATAS)
@pytest.mark.parametrize("extra", [None, EXAMPLE_WIRE[:3]])
def test_empty_readout_gives_no_hit_and_no_flag(data: bytes, extra: bytes | None) -> None:
    readout = AstroPix4Readout(data, 5, 6)
    assert readout.decode(extra) == []
    assert readout.decoding_status() == F.NONE
    assert readout.extra_bytes() is None


def test_empty_readouts_are_counted_by_both_decoders() -> None:
    hit = b"\xbc\xbc" + EXAMPLE_WIRE + b"\xbc\xbc"
    datas = [hit, *EMPTY_DATAS, hit, b"\x12\xbc", hit[:5]]  # the last two: flagged, not empty
    records = [make_record(d, 10 + i) for i, d in enumerate(datas)]
    for decoder in (BatchDecoder(), ChainedDecoder(AstroPix4Readout)):
        decoder.decode(records)
        assert decoder.num_empty == len(EMPTY_DATAS), type(decoder).__name__
        assert decoder.num_hits == 2
    one_by_one = BatchDecoder()
    for record in records:
        one_by_one.decode_readout(AstroPix4Readout.from_bytes(record))
    assert one_by_one.num_empty == len(EMPTY_DATAS)


@settings(max_examples=500, deadline=None)
@given(data=st.one_of(board_bytes(), st.lists(st.sampled_from([0xBC, 0xFF]), max_size=20).map(bytes)), extra=extra_bytes)
def test_no_hit_and_no_flag_means_only_idle_bytes(data: bytes, extra: bytes | None) -> None:
    # What the decoders count as empty (no hit, no flag) is exactly a readout
    # whose data is empty or only bc/ff bytes, with or without extra bytes.
    readout = AstroPix4Readout(data, 1, 2)
    hits = readout.decode(extra)
    counted_empty = not hits and readout.decoding_status() == F.NONE
    assert counted_empty == (data.strip(b"\xbc\xff") == b"")


# --------------------------------------------------------------------------
# The layout and fmt's re-exports
# --------------------------------------------------------------------------


def test_layout_constants() -> None:
    assert (layout.NUM_ROWS, layout.NUM_COLS, layout.NUM_CHIPS) == (35, 16, 32)
    assert [name for name, _, _ in layout.HIT_LAYOUT] == list(HIT_FIELDS[:12])
    assert sum(width for _, _, width in layout.HIT_LAYOUT) == 64
    starts = [start for _, start, _ in layout.HIT_LAYOUT]
    widths = [width for _, _, width in layout.HIT_LAYOUT]
    assert starts == [sum(widths[:k]) for k in range(12)]  # contiguous, in order
    assert dict((name, width) for name, _, width in layout.HIT_LAYOUT) == FIELD_WIDTHS
    assert [b for b in range(256) if layout.IS_START[b]] == list(START_BYTES)
    assert [b for b in range(256) if layout.IS_IDLE[b]] == [0xBC, 0xFF]
    assert layout.NS_PER_CLOCK_CYCLE * layout.CLOCK_CYCLES_PER_US == 1000


def test_fmt_still_exports_every_name() -> None:
    for name in fmt.__all__:
        assert getattr(fmt, name) is not None, name
    # Names other modules, tests and benchmarks import from fmt.
    for name in ("FLAG_NAMES", "RECORD_HEADER", "RECORD_HEADER_SIZE", "_RECORD_STRUCT", "hits_to_array"):
        assert hasattr(fmt, name), name
    assert fmt.AstroPix4Readout.__module__ == "astropix_nbmonitor.astropix4.readout"
    assert fmt.BatchDecoder.__module__ == "astropix_nbmonitor.astropix4.batch"
    assert fmt.HIT_DTYPE is layout.HIT_DTYPE
