"""The legacy DAQ text log (.log): read it, and convert it to an .apx file.

Before .apx files the DAQ wrote its runs as UTF-8 text (docs/format.md
section 10)::

    Voltagecard: {'thpmos': 0, ...}            one line per configuration block
    ...
     Namespace(name='threshold_40mV', ...)     the command-line options
    0<TAB>b'bcbce05042030620d701bcbc...ffff'   one line per readout

:func:`read_log` gives the whole run (:class:`LogRun`); :class:`LogReader`
reads it the way :class:`~astropix_nbmonitor.fileio.ApxReader` reads an .apx
file (``fileio.apx_open("run.log")`` returns one); :func:`convert` writes the
.apx file the collaboration's converter writes: one record per readout line,
with the line's id, a timestamp of 0 and the hex digits decoded (trailing
``ff`` stripped), and a header holding the configuration blocks under their
names and the options under ``options``.

Safety: the metadata lines are Python literals and are read as literals only.
A configuration block goes through :func:`ast.literal_eval`; the options line
is parsed with ``ast.parse(..., mode="eval")``, must be a call (``Namespace(...)``)
with keyword arguments only, and each keyword's value goes through
:func:`ast.literal_eval` on its own. Nothing is ever evaluated or run: a value
that is not a literal (``__import__('os').system('x')``, say) is kept as its
source text and counted in :attr:`LogReader.metadata_errors`.

Bad readout lines (an odd number of hex digits, as some real high-rate files
have, or anything unparseable) are skipped, counted by reason
(:attr:`LogReader.skipped_by_reason`) and reported once per pass with a
:class:`LogSkippedLinesWarning` naming the first line numbers.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .fileio import _ApxFile as _OpenFile
from .fmt import AbstractAstroPixReadout, AstroPix4Readout
from .record import pack_record

__all__ = [
    "LOG_EXTENSION",
    "OPTIONS_KEY",
    "ConvertResult",
    "LogReader",
    "LogRun",
    "LogSkippedLinesWarning",
    "add_convert_arguments",
    "convert",
    "read_log",
    "run_convert",
]

logger = logging.getLogger(__name__)

#: The extension of legacy DAQ logs.
LOG_EXTENSION = ".log"
#: The header key of the command-line options (as the collaboration's converter names it).
OPTIONS_KEY = "options"
#: Why a readout line is skipped.
SKIP_REASONS = ("odd_length", "unparseable")
#: How many skipped line numbers a warning names.
_NAMED_LINES = 5
#: Skipped line numbers kept (the count goes on beyond).
_KEPT_LINE_NUMBERS = 1000

_BLOCK_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_ .-]*?)\s*:\s*(.*)$", re.DOTALL)
_HEX = re.compile(r"^[0-9a-fA-F]*$")

PathLike = str | os.PathLike[str]


class LogSkippedLinesWarning(UserWarning):
    """Readout lines of a .log file that could not be read were skipped (and counted)."""


# --------------------------------------------------------------------------
# Metadata lines: literals only
# --------------------------------------------------------------------------


def parse_block_value(text: str) -> Any:
    """A configuration block's value, read as a Python literal and JSON-checked.

    Raises
    ------
    ValueError
        If ``text`` is not a literal, or holds values JSON cannot store
        (sets, bytes, complex numbers...).
    """
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        msg = f"not a Python literal ({type(exc).__name__}: {exc})"
        raise ValueError(msg) from None
    return _json_checked(value)


def parse_options(text: str) -> tuple[dict[str, Any], list[str]]:
    """The keywords of a ``Namespace(...)`` options line, each read as a literal.

    Parameters
    ----------
    text : str
        The line (leading and trailing blanks allowed).

    Returns
    -------
    options : dict
        Keyword name -> value; a value that is not a literal is kept as its
        source text.
    problems : list of str
        One message per keyword kept as text.

    Raises
    ------
    ValueError
        If the line is not a call with keyword arguments only.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        msg = f"not a Namespace(...) call ({type(exc).__name__}: {exc})"
        raise ValueError(msg) from None
    call = tree.body
    if not isinstance(call, ast.Call) or call.args or any(kw.arg is None for kw in call.keywords):
        msg = "not a Namespace(...) call with keyword arguments only"
        raise ValueError(msg)
    options: dict[str, Any] = {}
    problems: list[str] = []
    for keyword in call.keywords:
        try:
            options[keyword.arg] = _json_checked(ast.literal_eval(keyword.value))
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
            source = ast.get_source_segment(text.strip(), keyword.value) or ""
            options[keyword.arg] = source
            problems.append(f"option {keyword.arg}={source!r} is not a literal ({exc}); kept as text")
    return options, problems


def _json_checked(value: Any) -> Any:
    """``value`` if JSON can store it (tuples become lists), else ValueError."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        msg = f"holds a value an .apx header cannot store ({exc})"
        raise ValueError(msg) from None


def _store(header: dict[str, Any], key: str, value: Any) -> None:
    """Put ``value`` under ``key``; a repeated key gets a suffix (nothing read is lost)."""
    name, n = key, 2
    while name in header:
        name = f"{key}_{n}"
        n += 1
    header[name] = value


# --------------------------------------------------------------------------
# Readout lines
# --------------------------------------------------------------------------


def parse_readout_line(line: str) -> tuple[int, bytes] | str:
    """``(readout_id, board bytes)`` of one readout line, or why it cannot be read.

    The bytes keep their trailing ``ff`` padding (a readout strips it). The
    reason is one of :data:`SKIP_REASONS`.
    """
    head, sep, rest = line.strip().partition("\t")
    if not sep:
        head, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    if not head.isdigit() or not (rest.startswith(("b'", 'b"')) and rest.endswith(rest[1]) and len(rest) >= 3):
        return "unparseable"
    readout_id = int(head)
    digits = rest[2:-1]
    if readout_id >= 2**32 or not _HEX.match(digits):
        return "unparseable"
    if len(digits) % 2:
        return "odd_length"
    return readout_id, bytes.fromhex(digits)


def record_of(readout_id: int, data: bytes) -> bytes:
    """The record the collaboration's converter makes of a readout line (timestamp 0, padding stripped)."""
    return pack_record(readout_id, 0, bytes(data).rstrip(b"\xff"))


# --------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------


class LogReader(_OpenFile):
    """Read a .log file as :class:`~astropix_nbmonitor.fileio.ApxReader` reads an .apx file.

    The metadata lines are read at construction; records are read on
    iteration, each iteration (``for readout in reader`` or :meth:`records`)
    starting again from the first readout line.

    Parameters
    ----------
    path : str or os.PathLike
        The .log file.
    readout_class : type
        The readout class (default AstroPix 4, the only chip of the legacy DAQ).

    Attributes
    ----------
    path : pathlib.Path
    header : FileHeader
        ``readout_uid``, every configuration block by name and ``options``
        (a dict of the Namespace keywords). A block that is not a literal is
        kept as its text.
    readout_class : type
    metadata_errors : list of str
        One message per metadata line (or option) kept as text.
    num_readouts : int
        Records read by the last (or current) iteration.
    skipped_lines : int
        Readout lines skipped by that iteration.
    skipped_by_reason : dict of str to int
        The same, by reason (``odd_length``, ``unparseable``).
    skipped_line_numbers : list of int
        Their line numbers (1-based; the first thousand).
    truncated_bytes : int
        Always 0 (the .apx reader's attribute: a text file has no partial record).
    """

    def __init__(self, path: PathLike, *, readout_class: type[AbstractAstroPixReadout] = AstroPix4Readout) -> None:
        from .fileio import FileHeader

        self.path = Path(path)
        self.readout_class = readout_class
        self.metadata_errors: list[str] = []
        self.num_readouts = 0
        self.truncated_bytes = 0
        self._reset_skips()
        self._file: BinaryIO | None = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        try:
            content, self._data_offset, self._first_line = self._read_metadata()
        except BaseException:
            self.close()
            raise
        self.header = FileHeader(readout_class, content)
        for problem in self.metadata_errors:
            logger.warning("%s: %s", self.path, problem)

    # ------------------------------------------------------------------ metadata
    def _read_metadata(self) -> tuple[dict[str, Any], int, int]:
        """Parse the lines before the first readout line; returns the content, the offset and line number after."""
        f = self._require_open()
        content: dict[str, Any] = {}
        number = 0
        while True:
            offset = f.tell()
            raw = f.readline()
            if not raw:
                break
            text = raw.decode("utf-8", errors="replace")
            if text[:1].isdigit():
                return content, offset, number + 1
            number += 1
            if text.strip():
                self._read_metadata_line(content, number, text.strip())
        logger.info("%s holds no readout line", self.path)
        return content, f.tell(), number + 1

    def _read_metadata_line(self, content: dict[str, Any], number: int, text: str) -> None:
        """One metadata line: a ``Name: {...}`` block, or the options call."""
        block = _BLOCK_LINE.match(text)
        if block is not None and not text.startswith("Namespace("):
            key, value_text = block.group(1), block.group(2)
            try:
                value = parse_block_value(value_text)
            except ValueError as exc:
                value = value_text
                self.metadata_errors.append(f"line {number}: block {key!r} {exc}; kept as text")
            _store(content, key, value)
            return
        try:
            options, problems = parse_options(text)
        except ValueError as exc:
            self.metadata_errors.append(f"line {number}: {exc}; kept as text under {OPTIONS_KEY!r}")
            _store(content, OPTIONS_KEY, text)
            return
        self.metadata_errors.extend(f"line {number}: {p}" for p in problems)
        _store(content, OPTIONS_KEY, options)

    # ------------------------------------------------------------------ records
    def records(self) -> Iterator[bytes]:
        """Yield one readout record per readout line (id, timestamp 0, padding stripped).

        Lines that cannot be read are skipped and counted; at the end a
        :class:`LogSkippedLinesWarning` names the first of them.
        """
        f = self._require_open()
        f.seek(self._data_offset)
        self.num_readouts = 0
        self._reset_skips()
        for number, raw in enumerate(f, start=self._first_line):
            parsed = self._parse_line(raw)
            if parsed is None:
                continue
            if isinstance(parsed, str):
                self._skip(number, parsed)
                continue
            self.num_readouts += 1
            yield record_of(*parsed)
        self._report_skips()

    def __iter__(self) -> Iterator[AbstractAstroPixReadout]:
        """Yield the readouts in file order (see :meth:`records`)."""
        from_bytes = self.readout_class.from_bytes
        for record in self.records():
            yield from_bytes(record)

    @staticmethod
    def _parse_line(raw: bytes) -> tuple[int, bytes] | str | None:
        """A readout line's content, its skip reason, or None for a blank line."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "unparseable"
        if not text.strip():
            return None
        return parse_readout_line(text)

    def _reset_skips(self) -> None:
        self.skipped_lines = 0
        self.skipped_by_reason = dict.fromkeys(SKIP_REASONS, 0)
        self.skipped_line_numbers: list[int] = []

    def _skip(self, number: int, reason: str) -> None:
        self.skipped_lines += 1
        self.skipped_by_reason[reason] += 1
        if len(self.skipped_line_numbers) < _KEPT_LINE_NUMBERS:
            self.skipped_line_numbers.append(number)

    def _report_skips(self) -> None:
        if not self.skipped_lines:
            return
        reasons = ", ".join(f"{n} {reason.replace('_', '-')}" for reason, n in self.skipped_by_reason.items() if n)
        first = ", ".join(str(n) for n in self.skipped_line_numbers[:_NAMED_LINES])
        more = ", ..." if self.skipped_lines > _NAMED_LINES else ""
        msg = (
            f"{self.path}: skipped {self.skipped_lines} readout lines that could not be read ({reasons}), "
            f"at lines {first}{more}; {self.num_readouts} readouts read"
        )
        logger.warning(msg)
        warnings.warn(msg, LogSkippedLinesWarning, stacklevel=3)

    # ------------------------------------------------------------------ file
    @property
    def truncated(self) -> bool:
        """Always False (the .apx reader's attribute)."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.readout_class.__name__})"


# --------------------------------------------------------------------------
# A whole run, and the conversion
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LogRun:
    """Everything read from a .log file.

    Attributes
    ----------
    path : pathlib.Path
    header : dict
        ``readout_uid``, the configuration blocks by name and ``options``.
    records : list of bytes
        One readout record per readable readout line, in file order.
    skipped_lines : int
        Readout lines skipped (odd-length hex, unparseable).
    skipped_by_reason : dict of str to int
    skipped_line_numbers : list of int
        Their line numbers (1-based; the first thousand).
    metadata_errors : list of str
        Metadata lines or options kept as text because they are not literals.
    """

    path: Path
    header: dict[str, Any]
    records: list[bytes]
    skipped_lines: int
    skipped_by_reason: dict[str, int]
    skipped_line_numbers: list[int]
    metadata_errors: list[str]

    @property
    def num_readouts(self) -> int:
        """Readout records read."""
        return len(self.records)

    @property
    def options(self) -> dict[str, Any]:
        """The DAQ's command-line options (empty if the file has none)."""
        value = self.header.get(OPTIONS_KEY, {})
        return value if isinstance(value, dict) else {}

    def readouts(self) -> list[AbstractAstroPixReadout]:
        """The records as AstroPix 4 readouts."""
        return [AstroPix4Readout.from_bytes(r) for r in self.records]


def read_log(path: PathLike) -> LogRun:
    """Read a whole .log file (docs/format.md section 10).

    Never raises on bad content: bad readout lines are skipped and counted
    (with a :class:`LogSkippedLinesWarning`), metadata that is not a literal
    is kept as text. Raises ``OSError`` if the file cannot be opened.
    """
    with LogReader(path) as reader:
        records = list(reader.records())
        return LogRun(
            path=reader.path,
            header=dict(reader.header),
            records=records,
            skipped_lines=reader.skipped_lines,
            skipped_by_reason=dict(reader.skipped_by_reason),
            skipped_line_numbers=list(reader.skipped_line_numbers),
            metadata_errors=list(reader.metadata_errors),
        )


@dataclasses.dataclass(frozen=True)
class ConvertResult:
    """What :func:`convert` did: the file written, readouts written, lines skipped."""

    apx_path: Path
    num_readouts: int
    skipped_lines: int
    metadata_errors: int

    def summary(self) -> str:
        """One line for the person at the terminal."""
        note = f", {self.metadata_errors} metadata values kept as text" if self.metadata_errors else ""
        return (
            f"wrote {self.num_readouts} readouts to {self.apx_path}, "
            f"{self.skipped_lines} readout lines skipped{note}"
        )


def convert(log_path: PathLike, apx_path: PathLike, *, overwrite: bool = False) -> ConvertResult:
    """Convert a .log file to an .apx file, as the collaboration's converter does.

    The .apx file is written beside its final name and renamed at the end, so
    an interrupted conversion leaves no half-written .apx behind.

    Raises
    ------
    FileExistsError
        If ``apx_path`` exists and ``overwrite`` is False.
    """
    from .fileio import ApxWriter

    target = Path(apx_path)
    if target.exists() and not overwrite:
        msg = f"{target} exists (overwrite it with overwrite=True, --force on the command line)"
        raise FileExistsError(msg)
    partial = target.with_name(target.name + ".part")
    with LogReader(log_path) as reader:
        try:
            with ApxWriter(partial, header=reader.header, readout_class=reader.readout_class) as writer:
                for record in reader.records():
                    writer.write_record(record)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)
        result = ConvertResult(target, reader.num_readouts, reader.skipped_lines, len(reader.metadata_errors))
    logger.info("%s", result.summary())
    return result


# --------------------------------------------------------------------------
# The ``convert`` command
# --------------------------------------------------------------------------


def _suffix_path(suffix: str) -> Any:
    def check(text: str) -> Path:
        if Path(text).suffix.lower() != suffix:
            msg = f"{text!r} does not end in {suffix}"
            raise argparse.ArgumentTypeError(msg)
        return Path(text)

    return check


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``astropix-nbmonitor convert RUN.log RUN.apx``."""
    parser.add_argument("log", type=_suffix_path(LOG_EXTENSION), metavar="RUN.log", help="the legacy DAQ log to read")
    parser.add_argument("apx", type=_suffix_path(".apx"), metavar="RUN.apx", help="the .apx file to write")
    parser.add_argument("--force", action="store_true", help="overwrite RUN.apx if it exists")


def run_convert(args: argparse.Namespace) -> int:
    """Run ``convert``: one summary line (readouts written, lines skipped); errors are one line."""
    from .cli import CliError, emit

    if not args.log.is_file():
        raise CliError(f"{args.log}: no such file")
    try:
        with warnings.catch_warnings():
            # The summary line reports the skipped lines.
            warnings.simplefilter("ignore", LogSkippedLinesWarning)
            result = convert(args.log, args.apx, overwrite=args.force)
    except FileExistsError:
        raise CliError(f"{args.apx} exists; use --force to overwrite it") from None
    except OSError as exc:
        raise CliError(f"{exc.filename or args.log}: {exc.strerror or exc}") from None
    emit(result.summary())
    return 0
