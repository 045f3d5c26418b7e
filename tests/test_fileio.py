"""Tests of astropix_nbmonitor.fileio: .apx read and write."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_APX, assert_hits_equal, decode_chained, make_record, shared_data_file, split_apx
from hypothesis import given, settings
from hypothesis import strategies as st

from astropix_nbmonitor.fileio import (
    APX_MAGIC,
    ApxFormatError,
    ApxReader,
    ApxTruncatedWarning,
    ApxWriter,
    apx_open,
)
from astropix_nbmonitor.fmt import AstroPix4Readout, MalformedReadoutError, decode_batch
from astropix_nbmonitor.sim import AstroPix4Simulator


def write_raw(path: Path, header: bytes, records: list[bytes], magic: bytes = APX_MAGIC) -> Path:
    path.write_bytes(magic + struct.pack("<I", len(header)) + header + b"".join(records))
    return path


@pytest.fixture
def sim_records() -> list[bytes]:
    sim = AstroPix4Simulator(seed=5, hits_per_readout=2.0, faults={"split": 0.3, "ff_padding": 0.2})
    return sim.generate(200).records


# --------------------------------------------------------------------------
# Write, then read
# --------------------------------------------------------------------------


def test_write_then_read_round_trip(tmp_path: Path, sim_records: list[bytes]) -> None:
    readouts = [AstroPix4Readout.from_bytes(r) for r in sim_records]
    header = {"run": 7, "configuration": [{"vinj": 0.3}, {"thpix": 1.1}], "note": "µ-beam"}
    path = tmp_path / "run.apx"
    with apx_open(path, "w", header=header) as writer:
        assert isinstance(writer, ApxWriter)
        for readout in readouts:
            writer.write(readout)
        assert writer.num_readouts == len(readouts)
    assert writer.closed
    with apx_open(path) as reader:
        assert isinstance(reader, ApxReader)
        assert reader.header == {"readout_uid": 4000, **header}
        assert list(reader.header)[0] == "readout_uid"
        assert reader.readout_class is AstroPix4Readout
        got = list(reader)
        assert reader.num_readouts == len(readouts)
        assert not reader.truncated
        assert reader.truncated_bytes == 0
    assert reader.closed
    assert got == readouts
    assert [r.to_bytes() for r in got] == sim_records
    # The file is exactly what docs/format.md section 2 says.
    raw = path.read_bytes()
    json_header, records = split_apx(raw)
    assert json.loads(json_header) == reader.header
    assert records == sim_records


def test_write_record_is_byte_exact(tmp_path: Path, sim_records: list[bytes]) -> None:
    padded = make_record(b"\xbc\xbc\xff\xff", 1234)  # trailing ff still in the data
    path = tmp_path / "raw.apx"
    with apx_open(path, "w") as writer:
        for record in sim_records:
            writer.write_record(record)
        writer.write_record(padded)
    with apx_open(path) as reader:
        records = list(reader.records())
        readouts = list(reader)
    assert records == [*sim_records, padded]
    assert readouts[-1].data() == b"\xbc\xbc"
    assert_hits_equal(decode_batch(records), decode_chained(records)[0])


@pytest.mark.parametrize("record", [b"", b"\xfe\xdc\xba", make_record(b"\xbc", 1)[:-1], b"x" * 19])
def test_write_record_validates(tmp_path: Path, record: bytes) -> None:
    with apx_open(tmp_path / "bad.apx", "w") as writer, pytest.raises(MalformedReadoutError):
        writer.write_record(record)
    assert writer.num_readouts == 0


def test_writer_refuses_other_objects_and_conflicting_uid(tmp_path: Path) -> None:
    with apx_open(tmp_path / "a.apx", "w") as writer, pytest.raises(TypeError, match="AstroPix4Readout"):
        writer.write(make_record(b"", 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="readout_uid"):
        apx_open(tmp_path / "b.apx", "w", header={"readout_uid": 3000}, readout_class=AstroPix4Readout)
    with pytest.raises(TypeError, match="JSON"):
        apx_open(tmp_path / "c.apx", "w", header={"when": object()})
    with pytest.raises(ValueError, match="mode"):
        apx_open(tmp_path / "d.apx", "a")
    with pytest.raises(ValueError, match="header"):
        apx_open(tmp_path / "a.apx", "r", header={"x": 1})


def test_empty_run(tmp_path: Path) -> None:
    path = tmp_path / "empty.apx"
    with apx_open(path, "w", header={"readout_uid": 4000}):
        pass
    with apx_open(path) as reader:
        assert list(reader) == []
        assert reader.num_readouts == 0
        assert not reader.truncated


@settings(max_examples=25, deadline=None)
@given(chunk_size=st.integers(1, 300), seed=st.integers(0, 100))
def test_chunked_reading_gives_every_record(
    tmp_path_factory: pytest.TempPathFactory, chunk_size: int, seed: int
) -> None:
    records = AstroPix4Simulator(seed=seed, hits_per_readout=3.0).generate(30).records
    path = write_raw(tmp_path_factory.mktemp("chunks") / "c.apx", b'{"readout_uid": 4000}', records)
    with ApxReader(path, chunk_size=chunk_size) as reader:
        assert list(reader.records()) == records
        assert list(reader.records()) == records  # iterating again starts over


# --------------------------------------------------------------------------
# The real file
# --------------------------------------------------------------------------


def test_real_file(real_apx_path: Path, real_csv_hits: np.ndarray) -> None:
    with apx_open(real_apx_path) as reader:
        assert reader.header["readout_uid"] == 4000
        assert "configuration" in reader.header
        assert reader.readout_class is AstroPix4Readout
        readouts = list(reader)
        records = list(reader.records())
        assert not reader.truncated
    assert len(readouts) == len(records) == 775
    assert [r.readout_id for r in readouts] == list(range(775))
    raw = real_apx_path.read_bytes()
    assert raw.endswith(b"".join(records))
    assert len(raw) == reader.data_offset + sum(map(len, records))
    assert_hits_equal(decode_chained(records)[0], real_csv_hits)


# --------------------------------------------------------------------------
# Truncated files
# --------------------------------------------------------------------------


def source_file(real: bool, tmp_path: Path) -> Path:
    """The real file if available and asked for, else a simulated one."""
    if real:
        return shared_data_file(REAL_APX)
    records = AstroPix4Simulator(seed=3, hits_per_readout=2.0).generate(50).records
    return write_raw(tmp_path / "sim.apx", b'{"readout_uid": 4000, "sim": true}', records)


@pytest.mark.parametrize("real", [True, False], ids=["real", "simulated"])
@pytest.mark.parametrize("cut", [1, 2, 5, 18, 19, 20, 30])
def test_truncated_file(tmp_path: Path, real: bool, cut: int) -> None:
    raw = source_file(real, tmp_path).read_bytes()
    _, records = split_apx(raw)
    # Cut `cut` bytes into the last record (every record is > 30 bytes).
    last = records[-1]
    assert len(last) > cut
    keep = len(raw) - len(last) + cut
    path = tmp_path / "cut.apx"
    path.write_bytes(raw[:keep])
    with apx_open(path) as reader:
        with pytest.warns(ApxTruncatedWarning, match=rf"{cut} bytes at offset {keep - cut}") as info:
            got = list(reader.records())
        assert path.name in str(info[0].message)
        assert got == records[:-1]
        assert reader.truncated
        assert reader.truncated_bytes == cut
        assert reader.num_readouts == len(records) - 1
        # Readouts too; nothing raised.
        with pytest.warns(ApxTruncatedWarning):
            assert len(list(reader)) == len(records) - 1


@pytest.mark.parametrize("chunk_size", [1, 19, 64, 1 << 20])
def test_truncated_inside_a_long_record(tmp_path: Path, chunk_size: int) -> None:
    records = [make_record(b"\xbc" * 10, 0), make_record(b"\xbc" * 500, 1)]
    raw = APX_MAGIC + struct.pack("<I", 2) + b"{}" + b"".join(records)
    path = tmp_path / "long.apx"
    path.write_bytes(raw[:-100])
    with ApxReader(path, readout_class=AstroPix4Readout, chunk_size=chunk_size) as reader:
        with pytest.warns(ApxTruncatedWarning):
            assert list(reader.records()) == records[:1]
        assert reader.truncated_bytes == len(records[1]) - 100


def test_clean_file_emits_no_warning(tmp_path: Path, sim_records: list[bytes]) -> None:
    path = write_raw(tmp_path / "ok.apx", b'{"readout_uid": 4000}', sim_records)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with apx_open(path) as reader:
            assert len(list(reader)) == len(sim_records)
    assert reader.truncated_bytes == 0


# --------------------------------------------------------------------------
# Files that are not .apx
# --------------------------------------------------------------------------


def check_format_error(path: Path, offset: int, match: str) -> None:
    with pytest.raises(ApxFormatError, match=match) as info:
        apx_open(path)
    assert info.value.offset == offset
    assert isinstance(info.value, ValueError)
    assert path.name in str(info.value)
    assert f"offset {offset}" in str(info.value)


def test_wrong_magic(tmp_path: Path) -> None:
    check_format_error(write_raw(tmp_path / "m.apx", b"{}", [], magic=b"%APXDX"), 0, "not an .apx file")
    (tmp_path / "short.apx").write_bytes(b"%AP")
    check_format_error(tmp_path / "short.apx", 0, "not an .apx file")
    (tmp_path / "empty.apx").write_bytes(b"")
    check_format_error(tmp_path / "empty.apx", 0, "not an .apx file")


def test_header_length_beyond_the_file(tmp_path: Path) -> None:
    path = tmp_path / "h.apx"
    path.write_bytes(APX_MAGIC + struct.pack("<I", 1000) + b'{"readout_uid": 4000}')
    check_format_error(path, 6, "beyond the end")
    path.write_bytes(APX_MAGIC + b"\x01\x00")
    check_format_error(path, 6, "header length")


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"{not json", "not UTF-8 JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[4000]", "not an object"),
        (b'"readout_uid"', "not an object"),
        (b'{"run": 1}', "no readout_uid"),
        (b'{"readout_uid": 1234}', "unknown readout_uid"),
    ],
)
def test_bad_header(tmp_path: Path, header: bytes, match: str) -> None:
    check_format_error(write_raw(tmp_path / "j.apx", header, [make_record(b"\xbc", 0)]), 10, match)


def test_readout_class_override(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "o.apx", b'{"run": 1}', [make_record(b"\xbc\xbc", 0)])
    with apx_open(path, readout_class=AstroPix4Readout) as reader:
        assert [r.data() for r in reader] == [b"\xbc\xbc"]


@pytest.mark.parametrize("garbage", [b"\x00\x00\x00", b"\xfe\xdc\xbb" + b"\x00" * 30, b"xy"])
def test_wrong_record_header_in_the_middle(tmp_path: Path, sim_records: list[bytes], garbage: bytes) -> None:
    header = b'{"readout_uid": 4000}'
    records = [*sim_records[:10], garbage, *sim_records[10:]]
    path = write_raw(tmp_path / "g.apx", header, records)
    offset = 10 + len(header) + sum(map(len, sim_records[:10]))
    got = []
    with apx_open(path) as reader, pytest.raises(ApxFormatError, match=f"offset {offset}") as info:
        for record in reader.records():
            got.append(record)
    assert info.value.offset == offset
    assert got == sim_records[:10]  # what came before was delivered


def test_wrong_record_header_at_the_end(tmp_path: Path, sim_records: list[bytes]) -> None:
    path = write_raw(tmp_path / "e.apx", b'{"readout_uid": 4000}', [*sim_records, b"\x00\x01"])
    with apx_open(path) as reader, pytest.raises(ApxFormatError, match="0001"):
        list(reader)


def test_closed_reader(tmp_path: Path, sim_records: list[bytes]) -> None:
    path = write_raw(tmp_path / "c.apx", b'{"readout_uid": 4000}', sim_records)
    reader = apx_open(path)
    reader.close()
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        list(reader)


def test_simulated_run_through_a_file(tmp_path: Path) -> None:
    sim = AstroPix4Simulator(seed=11, hits_per_readout=1.5, faults={"split": 0.2, "skip_ids": 0.05})
    path = tmp_path / "sim.apx"
    truths = []
    with apx_open(path, "w", header={"source": "simulator"}) as writer:
        for _ in range(3):
            run = sim.generate(100)
            truths.append(run.truth)
            for record in run.records:
                writer.write_record(record)
    with apx_open(path) as reader:
        hits, flags = decode_chained(reader.records())
    assert_hits_equal(hits, np.concatenate(truths))


# --------------------------------------------------------------------------
# The collaboration's call forms (astropix_analysis.fileio and .fmt)
# --------------------------------------------------------------------------


def test_collaboration_write_and_read_forms(tmp_path: Path, sim_records: list[bytes]) -> None:
    from astropix_nbmonitor.fileio import FileHeader

    readouts = [AstroPix4Readout.from_bytes(r) for r in sim_records]
    header = FileHeader(AstroPix4Readout, {"version": 1, "stuff": "hits"})
    assert header == {"readout_uid": 4000, "version": 1, "stuff": "hits"}
    assert header.readout_uid() == 4000 and header.readout_class() is AstroPix4Readout
    path = tmp_path / "collab.apx"
    with apx_open(path, "wb", header) as output_file:
        for readout in readouts:
            readout.write(output_file)
    with apx_open(str(path), "rb") as input_file:
        assert input_file.header == header
        assert input_file.header.readout_class() is AstroPix4Readout
        assert list(input_file) == readouts
    with apx_open(tmp_path / "dict.apx", "wb", {"version": 2}) as writer:
        readouts[0].write(writer)
    with apx_open(tmp_path / "dict.apx") as reader:
        assert reader.header == {"readout_uid": 4000, "version": 2}
        assert list(reader) == readouts[:1]


def test_file_header_serialises_and_reads_back(tmp_path: Path) -> None:
    import io

    from astropix_nbmonitor.fileio import FileHeader

    header = FileHeader(AstroPix4Readout, {"a": [1, 2]})
    assert FileHeader.deserialize(header.serialize()) == header
    buf = io.BytesIO()
    header.write(buf)
    buf.seek(0)
    again = FileHeader.read(buf)
    assert again == header and again.readout_class() is AstroPix4Readout
    assert "a = [1, 2]" in str(header)
    with pytest.raises(ValueError, match="readout_uid"):
        FileHeader(AstroPix4Readout, {"readout_uid": 3000})
    with pytest.raises(ValueError, match="readout_uid"):
        FileHeader.deserialize("[1, 2]")


def test_readout_write_to_a_plain_binary_file_and_from_file(tmp_path: Path, sim_records: list[bytes]) -> None:
    readouts = [AstroPix4Readout.from_bytes(r) for r in sim_records[:5]]
    path = tmp_path / "plain.bin"
    with open(path, "wb") as f:
        for readout in readouts:
            readout.write(f)
    assert path.read_bytes() == b"".join(sim_records[:5])
    with open(path, "rb") as f:
        back = []
        while (readout := AstroPix4Readout.from_file(f)) is not None:
            back.append(readout)
    assert back == readouts


def test_hits_are_equal_when_their_bytes_are_equal() -> None:
    from astropix_nbmonitor.fmt import COLLABORATION_HIT_ORDER, AstroPix4Hit

    wire = bytes.fromhex("e05042030620d701")
    a = AstroPix4Hit.from_wire(wire, readout_id=1, timestamp=10, decoding_order=0)
    b = AstroPix4Hit.from_wire(wire, readout_id=7, timestamp=99, decoding_order=3)
    c = AstroPix4Hit.from_wire(bytes.fromhex("e05041130620d701"), 1, 10, 0)
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert a.raw_data == wire.translate(bytes(int(f"{i:08b}"[::-1], 2) for i in range(256)))
    assert AstroPix4Hit(a.raw_data, 1, 10, 0) == a
    assert AstroPix4Hit.ATTRIBUTE_NAMES == COLLABORATION_HIT_ORDER
    assert list(a.dict()) == [*COLLABORATION_HIT_ORDER, "raw_data"]
    assert a.dict()["raw_data"] == a.raw_data and a.hex() == a.raw_data.hex()
    assert str(a).startswith("AstroPix4Hit(chip_id = 0, payload = 7, readout_id = 1")
    assert AstroPix4Hit.gray_to_decimal(0b11) == 2


def test_readout_helpers_of_the_collaboration() -> None:
    data = bytes.fromhex("bcbce05042030620d701bcbce05041130620d701bcbcffff")
    readout = AstroPix4Readout(data, 3, 5)
    assert not readout.decoded()
    assert readout.hex() == data.rstrip(b"\xff").hex()
    text = readout.pretty_print()
    assert readout.decoded()
    assert text.splitlines()[0] == "AstroPix4Readout(22 bytes, readout_id = 3, timestamp = 5 ns)"
    assert sum(line.startswith("AstroPix4Hit(") for line in text.splitlines()) == 2
    assert text.splitlines()[-1] == "Decoding flags: none"
    assert "AstroPix4Hit" not in readout.pretty_print(hits=False)


def test_run_path_arg_takes_apx_and_log_only() -> None:
    import argparse

    from astropix_nbmonitor.fileio import run_path_arg

    assert run_path_arg("a/RUN.log") == Path("a/RUN.log")
    assert run_path_arg("RUN.APX") == Path("RUN.APX")
    with pytest.raises(argparse.ArgumentTypeError, match="does not end in .apx or .log"):
        run_path_arg("run.csv")
