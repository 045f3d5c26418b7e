"""Tests of astropix_nbmonitor.legacy: the DAQ text log (.log), read and converted."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from conftest import TEST_LOG, decode_chained, read_test_log, shared_data_file

from astropix_nbmonitor import legacy
from astropix_nbmonitor.fileio import FileHeader, apx_open
from astropix_nbmonitor.fmt import DecodingFlag as F
from astropix_nbmonitor.legacy import LogReader, LogSkippedLinesWarning, convert, read_log
from astropix_nbmonitor.record import parse_record

#: docs/format.md section 7: (decoding_order, row, column, tot_us) per readout, chained.
EXPECTED_HITS = {
    0: [(0, 1, 9, 31.05), (1, 1, 10, 43.4)],
    1: [(0, 1, 9, 31.05), (1, 1, 10, 43.4)],
    2: [(0, 1, 9, 31.05)],
    3: [(0, 1, 9, 31.05), (1, 1, 10, 43.4)],
    4: [(0, 1, 10, 43.4)],
    5: [(0, 1, 9, 6091.3)],
    6: [(0, 1, 9, 31.05), (1, 1, 10, 43.4)],
}
EXPECTED_FLAGS = [F(0), F(0), F.VALID_EXTRA_BYTES, F.ORPHAN_BYTES_MATCHED, F.INCOMPLETE_HIT_DROPPED, F(0), F(0)]
BLOCKS = ("Voltagecard", "Digital", "Biasblock", "iDAC", "vDAC", "Receiver")


@pytest.fixture
def test_log() -> Path:
    return shared_data_file(TEST_LOG)


def metadata_lines(path: Path) -> list[str]:
    """The lines of a .log file before its first readout line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[: next(i for i, line in enumerate(lines) if line[:1].isdigit())]


def write_log(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def hits_by_readout(records: list[bytes]) -> dict[int, list[tuple]]:
    hits, _flags = decode_chained(records)
    out: dict[int, list[tuple]] = {}
    for h in hits:
        out.setdefault(int(h["readout_id"]), []).append(
            (int(h["decoding_order"]), int(h["row"]), int(h["column"]), round(float(h["tot_us"]), 2))
        )
    return out


# --------------------------------------------------------------------------
# decode/test.log
# --------------------------------------------------------------------------


def test_test_log_gives_seven_readouts_with_their_ids_and_the_reference_hits(test_log: Path) -> None:
    run = read_log(test_log)
    assert run.num_readouts == 7
    assert run.skipped_lines == 0 and run.metadata_errors == []
    parsed = [parse_record(r) for r in run.records]
    assert [rid for rid, _, _ in parsed] == list(range(7))
    assert all(ts == 0 for _, ts, _ in parsed)
    # The collaboration's converter: the hex decoded, trailing ff stripped.
    assert [data for _, _, data in parsed] == [d.rstrip(b"\xff") for d in read_test_log(test_log)]
    assert hits_by_readout(run.records) == EXPECTED_HITS
    assert decode_chained(run.records)[1] == EXPECTED_FLAGS


def test_test_log_header_has_the_blocks_and_the_options(test_log: Path) -> None:
    run = read_log(test_log)
    assert list(run.header) == ["readout_uid", *BLOCKS, "options"]
    assert run.header["readout_uid"] == 4000
    assert run.header["Receiver"]["col9"] == 137438953466
    assert run.header["vDAC"]["thpix"] == 610
    assert run.options["name"] == "threshold_40mV"
    assert run.options["inject"] == [1, 9]
    assert run.options["maxruns"] is None
    assert run.options["chipVer"] == 4


def test_apx_open_reads_a_log_like_an_apx(test_log: Path) -> None:
    run = read_log(test_log)
    with apx_open(test_log) as reader:
        assert isinstance(reader, LogReader)
        assert isinstance(reader.header, FileHeader)
        assert reader.header.readout_class().__name__ == "AstroPix4Readout"
        assert dict(reader.header) == run.header
        assert list(reader.records()) == run.records
        readouts = list(reader)  # iterating again starts over
        assert [r.readout_id for r in readouts] == list(range(7))
        assert [r.to_bytes() for r in readouts] == run.records
        assert reader.num_readouts == 7 and reader.truncated_bytes == 0
    assert reader.closed
    with apx_open(test_log, "rb") as again:
        assert len(list(again)) == 7


def test_convert_writes_the_collaborations_apx(tmp_path: Path, test_log: Path) -> None:
    out = tmp_path / "run.apx"
    result = convert(test_log, out)
    assert (result.num_readouts, result.skipped_lines) == (7, 0)
    assert not (tmp_path / "run.apx.part").exists()
    with apx_open(out) as reader:
        assert reader.header == read_log(test_log).header
        assert list(reader.records()) == read_log(test_log).records
    with pytest.raises(FileExistsError, match="overwrite"):
        convert(test_log, out)
    assert convert(test_log, out, overwrite=True).num_readouts == 7


def convert_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    legacy.add_convert_arguments(parser)
    return parser.parse_args(argv)


def test_convert_command_prints_one_line_and_refuses_to_overwrite(
    tmp_path: Path, test_log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from astropix_nbmonitor.cli import CliError

    out = tmp_path / "run.apx"
    assert legacy.run_convert(convert_args(str(test_log), str(out))) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"wrote 7 readouts to {out}, 0 readout lines skipped"]
    with pytest.raises(CliError, match="--force"):
        legacy.run_convert(convert_args(str(test_log), str(out)))
    assert legacy.run_convert(convert_args(str(test_log), str(out), "--force")) == 0
    with pytest.raises(CliError, match="no such file"):
        legacy.run_convert(convert_args(str(tmp_path / "missing.log"), str(tmp_path / "m.apx")))
    with pytest.raises(SystemExit):
        convert_args(str(test_log), str(tmp_path / "run.bin"))


def test_convert_through_the_command_line(tmp_path: Path, test_log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from astropix_nbmonitor import cli

    if "convert" not in [c.name for c in cli.COMMANDS]:
        pytest.skip("the convert command is not registered in cli.COMMANDS yet")
    out = tmp_path / "cli.apx"
    assert cli.main(["convert", str(test_log), str(out)]) == 0
    assert "wrote 7 readouts" in capsys.readouterr().out
    assert cli.main(["convert", str(test_log), str(out)]) == 1
    assert "--force" in capsys.readouterr().err


# --------------------------------------------------------------------------
# Bad input: counted, reported, never run
# --------------------------------------------------------------------------


def test_odd_length_and_garbage_lines_are_skipped_and_counted(tmp_path: Path, test_log: Path) -> None:
    good = [line for line in test_log.read_text(encoding="utf-8").splitlines() if line[:1].isdigit()]
    lines = [
        *metadata_lines(test_log),
        good[0],
        "1\tb'bcbce0504203062'",  # odd number of hex digits
        "2\tb'zz'",  # not hex
        "garbage that is not a readout",
        "",
        "3\tbcbc",  # no b'...'
        good[1].replace("1\t", "4\t", 1),
    ]
    path = write_log(tmp_path / "bad.log", lines)
    with pytest.warns(LogSkippedLinesWarning, match=r"skipped 4 readout lines .* at lines 9, 10, 11, 13"):
        run = read_log(path)
    assert [parse_record(r)[0] for r in run.records] == [0, 4]
    assert run.skipped_lines == 4
    assert run.skipped_by_reason == {"odd_length": 1, "unparseable": 3}
    assert run.skipped_line_numbers == [9, 10, 11, 13]
    with pytest.warns(LogSkippedLinesWarning):
        result = convert(path, tmp_path / "bad.apx")
    assert (result.num_readouts, result.skipped_lines) == (2, 4)


def test_metadata_with_code_is_kept_as_text_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    call = f"__import__('os').system('touch {marker}')"
    lines = [
        "Voltagecard: {'thpmos': 0, 'vcasc2': 1.1}",
        f"Digital: {{'clkmux': {call}}}",
        f" Namespace(name='run', inject=[1, 9], cmd={call})",
        f"Evil: {call}",
        "0\tb'bcbce05042030620d701bcbcffff'",
    ]
    path = write_log(tmp_path / "evil.log", lines)
    run = read_log(path)
    assert not marker.exists()
    assert run.header["Voltagecard"] == {"thpmos": 0, "vcasc2": 1.1}
    assert run.header["Digital"] == f"{{'clkmux': {call}}}"
    assert run.header["Evil"] == call
    assert run.options == {"name": "run", "inject": [1, 9], "cmd": call}
    assert len(run.metadata_errors) == 3
    assert run.num_readouts == 1


@pytest.mark.parametrize(
    "options_line",
    ["__import__('os').system('x')", "Namespace(*['a'])", "Namespace(**{'a': 1})", "not python at all ((("],
)
def test_an_options_line_that_is_not_a_keyword_call_is_kept_as_text(tmp_path: Path, options_line: str) -> None:
    path = write_log(tmp_path / "o.log", [options_line, "0\tb'bcbc'"])
    run = read_log(path)
    assert run.header["options"] == options_line
    assert run.options == {}
    assert len(run.metadata_errors) == 1


def test_values_json_cannot_store_are_kept_as_text(tmp_path: Path) -> None:
    path = write_log(tmp_path / "s.log", ["Odd: {'a': {1, 2}}", "Tup: {'t': (1, 2)}", "0\tb'bcbc'"])
    run = read_log(path)
    assert run.header["Odd"] == "{'a': {1, 2}}"
    assert run.header["Tup"] == {"t": [1, 2]}


def test_a_log_without_readouts_or_metadata(tmp_path: Path) -> None:
    only_meta = read_log(write_log(tmp_path / "m.log", ["iDAC: {'vn1': 20}"]))
    assert only_meta.num_readouts == 0 and only_meta.header["iDAC"] == {"vn1": 20}
    empty = tmp_path / "e.log"
    empty.write_bytes(b"")
    assert read_log(empty).num_readouts == 0
    assert read_log(empty).header == {"readout_uid": 4000}


def test_invalid_utf8_and_huge_ids_are_unparseable(tmp_path: Path) -> None:
    path = tmp_path / "u.log"
    path.write_bytes(b"0\tb'bcbc'\n1\tb'\xff\xfe'\n99999999999\tb'bcbc'\n2\tb'bcbc'\n")
    with pytest.warns(LogSkippedLinesWarning):
        run = read_log(path)
    assert [parse_record(r)[0] for r in run.records] == [0, 2]
    assert run.skipped_by_reason["unparseable"] == 2


def test_the_source_never_evaluates() -> None:
    source = Path(legacy.__file__).read_text(encoding="utf-8")
    assert "eval(" not in source.replace("literal_eval(", "")
    assert "exec(" not in source
