""".apx files: read and write AstroPix readout records (docs/format.md section 2).

An .apx file is the magic ``%APXDF``, a uint32 header length, a UTF-8 JSON
object (always with ``"readout_uid"``) and then readout records back to back
until the end of the file::

    with apx_open("run.apx") as reader:
        for readout in reader:
            hits = readout.decode()

    with apx_open("copy.apx", "w", header={"run": 7}) as writer:
        writer.write(readout)

The collaboration's call forms work too (``astropix_analysis.fileio``)::

    with apx_open("copy.apx", "wb", FileHeader(AstroPix4Readout, {"run": 7})) as output_file:
        readout.write(output_file)
    with apx_open("run.apx", "rb") as input_file:
        for readout in input_file: ...

A legacy DAQ log (``.log``, docs/format.md section 10) opens the same way for
reading: ``apx_open("run.log")`` returns a
:class:`~astropix_nbmonitor.legacy.LogReader`, with the same iteration,
``records()`` and ``header``.

A file that ends in the middle of a record (a run that was killed) is read up
to its last complete record; :class:`ApxTruncatedWarning` then reports the
tail, and :attr:`ApxReader.truncated_bytes` says how long it was.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, overload

from .fmt import AbstractAstroPixReadout, AstroPix4Readout, uid_to_readout_class
from .record import RECORD_HEADER_SIZE, RECORD_MAGIC, RECORD_STRUCT, parse_record

__all__ = [
    "APX_MAGIC",
    "ApxFormatError",
    "ApxReader",
    "ApxTruncatedWarning",
    "ApxWriter",
    "FileHeader",
    "apx_open",
    "run_path_arg",
]

logger = logging.getLogger(__name__)

#: The six bytes every .apx file starts with.
APX_MAGIC = b"%APXDF"
_HEADER_LENGTH = struct.Struct("<I")
#: Offset of the JSON header in the file.
_HEADER_OFFSET = len(APX_MAGIC) + _HEADER_LENGTH.size
_DEFAULT_CHUNK_SIZE = 1 << 20

PathLike = str | os.PathLike[str]


class ApxFormatError(ValueError):
    """An .apx file that does not follow the format (docs/format.md section 2).

    Attributes
    ----------
    path : str
        The file.
    offset : int
        Byte offset in the file where the problem is.
    """

    def __init__(self, message: str, *, path: str, offset: int) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class ApxTruncatedWarning(UserWarning):
    """An .apx file ends in the middle of a record (a run that was killed)."""


class FileHeader(dict):
    """The header of an .apx file: ``readout_uid`` first, then any JSON-serialisable keys.

    The collaboration's ``FileHeader(readout_class, content)``, here a plain
    ``dict`` as well (so ``header["configuration"]``, ``header == {...}`` and
    ``json.dumps(header)`` work as before). Readers give their header as one.

    Parameters
    ----------
    readout_class : type
        The readout class of the file's records (its ``uid()`` is stored).
    content : mapping, optional
        The other keys. A ``readout_uid`` in it must be that of ``readout_class``.

    Raises
    ------
    ValueError
        If ``content`` holds another ``readout_uid``.
    """

    def __init__(self, readout_class: type[AbstractAstroPixReadout], content: Mapping[str, Any] | None = None) -> None:
        given = dict(content or {})
        uid = readout_class.uid()
        if "readout_uid" in given and given["readout_uid"] != uid:
            msg = f"header readout_uid {given['readout_uid']!r} does not match {readout_class.__name__} (uid {uid})"
            raise ValueError(msg)
        given.pop("readout_uid", None)
        super().__init__({"readout_uid": uid, **given})
        self._readout_class = readout_class

    @classmethod
    def _of(cls, content: dict[str, Any], readout_class: type[AbstractAstroPixReadout]) -> FileHeader:
        """A header holding ``content`` exactly as read (its own ``readout_uid`` kept)."""
        header = cls.__new__(cls)
        dict.__init__(header, content)
        header._readout_class = readout_class
        return header

    def readout_uid(self) -> int:
        """The ``readout_uid`` of the file."""
        return self["readout_uid"]

    def readout_class(self) -> type[AbstractAstroPixReadout]:
        """The readout class of the file's records."""
        return self._readout_class

    def serialize(self) -> str:
        """The header as JSON text."""
        return json.dumps(self)

    @classmethod
    def deserialize(cls, text: str) -> FileHeader:
        """A header from JSON text (the readout class from its ``readout_uid``).

        Raises
        ------
        ValueError
            If the text is not a JSON object with a known ``readout_uid``.
        """
        content = json.loads(text)
        if not isinstance(content, dict) or "readout_uid" not in content:
            msg = f"an .apx header is a JSON object with a readout_uid, got {text[:80]!r}"
            raise ValueError(msg)
        return cls._of(content, uid_to_readout_class(content["readout_uid"]))

    def write(self, output_file: BinaryIO) -> None:
        """Write the header length and the JSON text to a binary file (after the magic)."""
        data = self.serialize().encode("utf-8")
        output_file.write(_HEADER_LENGTH.pack(len(data)) + data)

    @classmethod
    def read(cls, input_file: BinaryIO) -> FileHeader:
        """Read the header length and the JSON text from a binary file (after the magic)."""
        (length,) = _HEADER_LENGTH.unpack(input_file.read(_HEADER_LENGTH.size))
        return cls.deserialize(input_file.read(length).decode("utf-8"))

    def __str__(self) -> str:
        fields = ", ".join(f"{key} = {value}" for key, value in self.items())
        return f"Header({fields})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({getattr(self._readout_class, '__name__', '?')}, {dict(self)!r})"


class _ApxFile:
    """What the reader and the writer share: an open file, closed once."""

    path: Path
    _file: BinaryIO | None

    def _require_open(self) -> BinaryIO:
        if self._file is None:
            msg = f"{self.path} is closed"
            raise ValueError(msg)
        return self._file

    def close(self) -> None:
        """Close the file (harmless when already closed); a writer flushes first."""
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._file is None

    def __enter__(self) -> _ApxFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ApxReader(_ApxFile):
    """Read an .apx file: its JSON header, then its readout records.

    Usually made by :func:`apx_open`. The header is read at construction;
    records are read on iteration, in chunks of ``chunk_size`` bytes. Each
    iteration (``for readout in reader`` or :meth:`records`) starts again from
    the first record.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    readout_class : type, optional
        The readout class; by default the one of the header's ``readout_uid``.
    chunk_size : int
        Bytes read from the file at a time.

    Attributes
    ----------
    path : pathlib.Path
        The file.
    header : FileHeader
        The parsed JSON header (a dict).
    readout_class : type
        The :class:`~astropix_nbmonitor.fmt.AbstractAstroPixReadout` subclass
        the records are parsed with.
    data_offset : int
        File offset of the first record.
    num_readouts : int
        Records read by the last (or current) iteration.
    truncated_bytes : int
        Size of the incomplete record at the end of the file; 0 when the file
        ends cleanly. Set once an iteration reaches the end of the file.
    truncated : bool
        ``truncated_bytes > 0``.

    Raises
    ------
    ApxFormatError
        On a wrong magic, a header length beyond the end of the file, a header
        that is not a JSON object, or an unknown ``readout_uid``.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        readout_class: type[AbstractAstroPixReadout] | None = None,
        chunk_size: int = _DEFAULT_CHUNK_SIZE,
    ) -> None:
        if chunk_size < 1:
            msg = f"chunk_size must be >= 1, got {chunk_size!r}"
            raise ValueError(msg)
        self.path = Path(path)
        self.chunk_size = int(chunk_size)
        self.num_readouts = 0
        self.truncated_bytes = 0
        self._file: BinaryIO | None = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        try:
            content, self.data_offset = self._read_header()
            self.header = FileHeader._of(content, self._resolve_class(content, readout_class))
            self.readout_class = self.header.readout_class()
        except BaseException:
            self.close()
            raise
        logger.debug("opened %s: %d header bytes, %s", self.path, self.data_offset, self.readout_class.__name__)

    # ------------------------------------------------------------------

    def _error(self, what: str, offset: int) -> ApxFormatError:
        msg = f"{self.path}: {what} (at offset {offset})"
        return ApxFormatError(msg, path=str(self.path), offset=offset)

    def _read_header(self) -> tuple[dict[str, Any], int]:
        f = self._require_open()
        size = os.fstat(f.fileno()).st_size
        start = f.read(_HEADER_OFFSET)
        if start[: len(APX_MAGIC)] != APX_MAGIC:
            raise self._error(f"not an .apx file: starts with {start[:len(APX_MAGIC)]!r}, expected {APX_MAGIC!r}", 0)
        if len(start) < _HEADER_OFFSET:
            raise self._error(f"file of {size} bytes ends inside the header length field", len(APX_MAGIC))
        (length,) = _HEADER_LENGTH.unpack_from(start, len(APX_MAGIC))
        if _HEADER_OFFSET + length > size:
            raise self._error(
                f"header length {length} goes beyond the end of the file ({size} bytes)", len(APX_MAGIC)
            )
        text = f.read(length)
        try:
            header = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._error(f"header is not UTF-8 JSON: {exc}", _HEADER_OFFSET) from None
        if not isinstance(header, dict):
            raise self._error(f"header is a JSON {type(header).__name__}, not an object", _HEADER_OFFSET)
        return header, _HEADER_OFFSET + length

    def _resolve_class(
        self, header: dict[str, Any], readout_class: type[AbstractAstroPixReadout] | None
    ) -> type[AbstractAstroPixReadout]:
        if readout_class is not None:
            return readout_class
        if "readout_uid" not in header:
            raise self._error("header has no readout_uid", _HEADER_OFFSET)
        try:
            return uid_to_readout_class(header["readout_uid"])
        except ValueError as exc:
            raise self._error(str(exc), _HEADER_OFFSET) from None


    # ------------------------------------------------------------------

    @property
    def truncated(self) -> bool:
        """True when the file ends in the middle of a record."""
        return self.truncated_bytes > 0

    def records(self) -> Iterator[bytes]:
        """Yield the raw readout records (header and data, as on disk).

        Ready to replay over UDP or to hand to
        :func:`~astropix_nbmonitor.fmt.decode_batch`. At the end of the file,
        sets :attr:`truncated_bytes` and warns with
        :class:`ApxTruncatedWarning` if the last record is incomplete.

        Raises
        ------
        ApxFormatError
            When a record does not start with ``fe dc ba``.
        """
        f = self._require_open()
        f.seek(self.data_offset)
        self.num_readouts = 0
        self.truncated_bytes = 0
        chunk_size = self.chunk_size
        magic = RECORD_MAGIC
        head = RECORD_HEADER_SIZE
        unpack_header = RECORD_STRUCT.unpack_from
        buf = b""
        pos = 0  # position of the next record in buf
        base = self.data_offset  # file offset of buf[0]
        eof = False
        while True:
            end = len(buf)
            while pos + head <= end:
                seen, _, _, length = unpack_header(buf, pos)
                if seen != magic:
                    raise self._bad_record(seen, base + pos)
                stop = pos + head + length
                if stop > end:
                    break
                self.num_readouts += 1
                yield buf[pos:stop]
                pos = stop
            if eof:
                break
            # Keep the unread tail and read on; grow the read when a single
            # record is larger than a chunk, but never beyond the end of the
            # file: a length field claiming 4 GB must not allocate 4 GB.
            need = chunk_size
            if pos + head <= end:
                length = unpack_header(buf, pos)[3]
                if head + length - (end - pos) > chunk_size:
                    left = os.fstat(f.fileno()).st_size - f.tell()
                    need = max(chunk_size, min(head + length - (end - pos), left))
            more = f.read(need)
            if not more:
                eof = True
            base += pos
            buf = buf[pos:] + more
            pos = 0
        tail = len(buf) - pos
        if tail:
            offset = base + pos
            # A partial record header must still start like one.
            seen = buf[pos : pos + 3]
            if seen != magic[: len(seen)]:
                raise self._bad_record(seen, offset)
            self.truncated_bytes = tail
            msg = (
                f"{self.path} ends in the middle of a record: {tail} bytes at offset {offset} "
                f"not read (after {self.num_readouts} complete records)"
            )
            logger.info(msg)
            warnings.warn(msg, ApxTruncatedWarning, stacklevel=2)

    def _bad_record(self, seen: bytes, offset: int) -> ApxFormatError:
        return self._error(
            f"record {self.num_readouts} starts with {seen.hex()}, expected {RECORD_MAGIC.hex()}", offset
        )

    def __iter__(self) -> Iterator[AbstractAstroPixReadout]:
        """Yield the readouts in file order (see :meth:`records`)."""
        from_bytes = self.readout_class.from_bytes
        for record in self.records():
            yield from_bytes(record)


    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.readout_class.__name__})"


class ApxWriter(_ApxFile):
    """Write an .apx file: magic, header, then one readout record at a time.

    Usually made by :func:`apx_open` with mode ``"w"``. The header is written
    at construction: the given dictionary with ``"readout_uid"`` set to that
    of ``readout_class`` (put first).

    Parameters
    ----------
    path : str or os.PathLike
        The file (created or overwritten).
    header : mapping or FileHeader, optional
        Any JSON-serialisable keys to store (chip configuration, run
        arguments...). A ``readout_uid`` in it must match ``readout_class``.
    readout_class : type, optional
        The readout class; by default that of a :class:`FileHeader`, else the
        one of ``header["readout_uid"]`` if given, else
        :class:`~astropix_nbmonitor.fmt.AstroPix4Readout`.

    Attributes
    ----------
    path : pathlib.Path
    header : FileHeader
        The header as written.
    readout_class : type
    num_readouts : int
        Records written so far.

    Raises
    ------
    ValueError
        If the header's ``readout_uid`` does not match ``readout_class``.
    TypeError
        If the header cannot be serialised to JSON.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        header: Mapping[str, Any] | None = None,
        readout_class: type[AbstractAstroPixReadout] | None = None,
    ) -> None:
        given = dict(header or {})
        if readout_class is None and isinstance(header, FileHeader):
            readout_class = header.readout_class()
        if readout_class is None:
            readout_class = uid_to_readout_class(given["readout_uid"]) if "readout_uid" in given else AstroPix4Readout
        self.header = FileHeader(readout_class, given)
        try:
            text = json.dumps(self.header).encode("utf-8")
        except (TypeError, ValueError) as exc:
            msg = f"the .apx header must be JSON-serialisable: {exc}"
            raise TypeError(msg) from None
        self.path = Path(path)
        self.readout_class = readout_class
        self.num_readouts = 0
        self._file: BinaryIO | None = open(self.path, "wb", buffering=_DEFAULT_CHUNK_SIZE)  # noqa: SIM115
        self._file.write(APX_MAGIC + _HEADER_LENGTH.pack(len(text)) + text)
        logger.debug("writing %s (%s)", self.path, readout_class.__name__)


    def write(self, readout: AbstractAstroPixReadout) -> None:
        """Append one readout (as its record, :meth:`to_bytes`).

        ``readout.write(writer)`` (the collaboration's call form) does the
        same; raw record bytes go through :meth:`write_record`.

        Raises
        ------
        TypeError
            If ``readout`` is not an instance of :attr:`readout_class`.
        """
        if not isinstance(readout, self.readout_class):
            msg = f"expected a {self.readout_class.__name__}, got {type(readout).__name__}"
            raise TypeError(msg)
        self._require_open().write(readout.to_bytes())
        self.num_readouts += 1

    def write_record(self, record: bytes) -> None:
        """Append one raw readout record, written exactly as given.

        Raises
        ------
        MalformedReadoutError
            If the record is short, has a wrong header or a wrong length.
        """
        f = self._require_open()
        parse_record(record)
        f.write(record)
        self.num_readouts += 1

    def flush(self) -> None:
        """Push what was written to the operating system."""
        self._require_open().flush()


    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.readout_class.__name__}, {self.num_readouts} readouts)"


#: The extensions :func:`apx_open` reads.
READABLE_EXTENSIONS = (".apx", ".log")
_READ_MODES = ("r", "rb")
_WRITE_MODES = ("w", "wb")


@overload
def apx_open(
    path: PathLike,
    mode: Literal["r", "rb"] = "r",
    header: None = None,
    *,
    readout_class: type[AbstractAstroPixReadout] | None = None,
) -> ApxReader: ...


@overload
def apx_open(
    path: PathLike,
    mode: Literal["w", "wb"],
    header: Mapping[str, Any] | FileHeader | None = None,
    *,
    readout_class: type[AbstractAstroPixReadout] | None = None,
) -> ApxWriter: ...


def apx_open(
    path: PathLike,
    mode: str = "r",
    header: Mapping[str, Any] | FileHeader | None = None,
    *,
    readout_class: type[AbstractAstroPixReadout] | None = None,
) -> Any:
    """Open an .apx file for reading (``"r"``/``"rb"``) or writing (``"w"``/``"wb"``).

    ``apx_open(path, "wb", header)`` and ``apx_open(path, "rb")``, the
    collaboration's call forms, work as well as the keyword form. A path
    ending in ``.log`` is read as a legacy DAQ log
    (:class:`~astropix_nbmonitor.legacy.LogReader`: the same iteration,
    ``records()`` and ``header``).

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    mode : {"r", "rb", "w", "wb"}
        Read an existing file, or create (overwrite) one.
    header : mapping or FileHeader, optional
        Writing only: the keys to store in the JSON header (``readout_uid`` is
        added); a :class:`FileHeader` also gives the readout class.
    readout_class : type, optional
        Reading: overrides the header's ``readout_uid``. Writing: the class of
        the readouts (default :class:`~astropix_nbmonitor.fmt.AstroPix4Readout`).

    Returns
    -------
    ApxReader, LogReader or ApxWriter
        All are context managers.
    """
    if mode in _READ_MODES:
        if header is not None:
            msg = f"header is for writing only; got header={header!r} with mode {mode!r}"
            raise ValueError(msg)
        if Path(path).suffix.lower() == ".log":
            from .legacy import LogReader

            return LogReader(path, **({"readout_class": readout_class} if readout_class is not None else {}))
        return ApxReader(path, readout_class=readout_class)
    if mode in _WRITE_MODES:
        return ApxWriter(path, header=header, readout_class=readout_class)
    msg = f"mode must be 'r', 'rb', 'w' or 'wb', got {mode!r}"
    raise ValueError(msg)


def run_path_arg(text: str) -> Path:
    """An ``argparse`` type: a path ending in one of :data:`READABLE_EXTENSIONS` (.apx or .log)."""
    import argparse

    path = Path(text)
    if path.suffix.lower() not in READABLE_EXTENSIONS:
        msg = f"{text!r} does not end in .apx or .log"
        raise argparse.ArgumentTypeError(msg)
    return path
