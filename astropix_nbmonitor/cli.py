"""The ``astropix-nbmonitor`` command line.

Sub-commands (each has ``--help``, ``--group`` and ``--port``):

``send FILE.apx``
    Replay the readouts of an .apx file over UDP, at a given rate, once or in
    a loop (readout ids renumbered so that they stay consecutive).
``simulate``
    Stream synthetic AstroPix 4 readouts (:mod:`astropix_nbmonitor.sim`).
``record OUT.apx``
    Receive readouts and write them to an .apx file.
``watch``
    Show the monitor's counters live in a terminal (over SSH, no browser):
    one line per update, or the whole table redrawn in place on a terminal.
    Uses the headless :class:`~astropix_nbmonitor.engine.MonitorEngine`
    (no widget library is imported).
``demo``, ``serve``
    JupyterLab and Voila launchers, from :mod:`astropix_nbmonitor.app`
    (registered when that module is present).

A sub-command is one :class:`Command` entry in :data:`COMMANDS`: a name, a
help line, a function that adds its options to an ``argparse`` parser and a
function that runs it and returns the exit code. Entries may name their
functions as ``"module:function"`` strings, imported only when the command
line is parsed; an entry whose module does not exist is left out.

Errors the user can fix (a missing file, a port in use, a bad option) are
reported as one line on stderr with a non-zero exit code: 1 for a failure,
2 for bad usage. Ctrl-C and SIGTERM end ``send``, ``simulate``, ``record``
and ``watch`` cleanly, with their summary, and exit code 0.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import itertools
import logging
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__, fileio
from .fmt import RECORD_HEADER_SIZE, AstroPix4Readout
from .sim import AstroPix4Simulator, Faults
from .sock import DEFAULT_PORT, LOCAL_HOST, AddressInUseError, InvalidAddressError, MulticastSender, resolve_address

if TYPE_CHECKING:
    from .status import Status

__all__ = [
    "COMMANDS",
    "PROG",
    "CliError",
    "Command",
    "build_parser",
    "emit",
    "group_arg",
    "main",
    "parse_faults",
    "port_arg",
]

logger = logging.getLogger(__name__)

PROG = "astropix-nbmonitor"
#: Default replay rate of ``send`` and ``simulate`` (readouts per second).
DEFAULT_RATE = 1000.0
#: Time between two bursts of the paced senders (s).
_BURST_PERIOD = 0.002
#: Most records sent in one burst.
_MAX_BURST = 1000
#: A paced sender that falls further behind than this gives up catching up (s).
_MAX_LAG = 0.25
#: How often ``record`` empties the listener's buffer (s).
_RECORD_POLL = 0.02


class CliError(Exception):
    """An error to report as one line, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


_AnyFn = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class Command:
    """One sub-command.

    Attributes
    ----------
    name : str
        The sub-command's name.
    help : str
        One line shown in ``astropix-nbmonitor --help``.
    add_arguments : callable or str
        ``add_arguments(parser)`` adds the command's own options; or a
        ``"module:function"`` string, imported lazily.
    run : callable or str
        ``run(args) -> int`` runs the command; or a ``"module:function"`` string.
    address_options : bool
        Add the common ``--group`` and ``--port`` options.
    """

    name: str
    help: str
    add_arguments: _AnyFn | str
    run: _AnyFn | str
    address_options: bool = True


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def emit(*parts: object, file: Any = None) -> None:
    """Write a line for the person at the terminal (the commands' only output path)."""
    print(*parts, file=sys.stdout if file is None else file, flush=True)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        msg = f"{text!r} is not a number"
        raise argparse.ArgumentTypeError(msg) from None
    if not value > 0 or value == float("inf"):
        msg = f"{text!r} must be a positive number"
        raise argparse.ArgumentTypeError(msg)
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        msg = f"{text!r} is not a number of readouts per second"
        raise argparse.ArgumentTypeError(msg) from None
    if not value >= 0 or value == float("inf"):
        msg = f"rate {text!r} must be >= 0 (0: as fast as possible)"
        raise argparse.ArgumentTypeError(msg)
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        msg = f"{text!r} is not an integer"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"{text!r} must be at least 1"
        raise argparse.ArgumentTypeError(msg)
    return value


def port_arg(text: str, *, allow_zero: bool = False) -> int:
    """``argparse`` type of a port option: an integer in 1..65535 (0..65535 with ``allow_zero``: 0 picks a free one)."""
    try:
        value = int(text)
    except ValueError:
        msg = f"port {text!r} is not an integer"
        raise argparse.ArgumentTypeError(msg) from None
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        msg = f"port {value} is not in {low}..65535" + (" (0 picks a free one)" if allow_zero else "")
        raise argparse.ArgumentTypeError(msg)
    return value


def group_arg(text: str) -> str:
    """``argparse`` type of a ``--group`` option: an IPv4 address (host names resolved)."""
    try:
        return resolve_address(text)
    except InvalidAddressError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_faults(text: str) -> dict[str, float]:
    """Parse ``"split=0.01,skip_ids=0.001"`` into ``{"split": 0.01, "skip_ids": 0.001}``.

    Raises
    ------
    ValueError
        On an item that is not ``name=probability``, or a probability that is
        not a number in [0, 1].
    """
    faults: dict[str, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            msg = f"fault {item!r} is not name=probability (e.g. split=0.01)"
            raise ValueError(msg)
        try:
            probability = float(value)
        except ValueError:
            msg = f"fault {name}: probability {value.strip()!r} is not a number"
            raise ValueError(msg) from None
        if not 0.0 <= probability <= 1.0:
            msg = f"fault {name}: probability {probability} is not in [0, 1]"
            raise ValueError(msg)
        faults[name] = probability
    return faults


def _faults_arg(text: str) -> dict[str, float]:
    try:
        return parse_faults(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _apx_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() != ".apx":
        msg = f"{text!r} does not end in .apx"
        raise argparse.ArgumentTypeError(msg)
    return path


def _summary_rate(count: int, seconds: float) -> str:
    rate = count / seconds if seconds > 0 else 0.0
    return f"{count} readouts, {seconds:.2f} s, {rate:.0f} readouts/s"


def _print_sent(tally: _Tally, t0: float, destination: str, interrupted: bool, tail: str = "") -> None:
    """The summary line of ``send`` and ``simulate``."""
    note = " (interrupted)" if interrupted else ""
    seconds = time.monotonic() - t0
    emit(f"sent {_summary_rate(tally.records, seconds)}, {tally.nbytes} bytes, {destination}{note}{tail}")


@dataclasses.dataclass
class _Tally:
    """What a sender has sent so far, updated after every burst.

    Attributes
    ----------
    records : int
        Records (datagrams) sent.
    nbytes : int
        Bytes sent in them.
    """

    records: int = 0
    nbytes: int = 0

    def add(self, chunk: Sequence[bytes]) -> None:
        """Count ``chunk``, just sent."""
        self.records += len(chunk)
        self.nbytes += sum(map(len, chunk))


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """Turn SIGINT and SIGTERM into an event while the block runs.

    A sender that sees the event stops between two bursts, so that its
    summary counts exactly the records that went out (an exception raised in
    the middle of a burst would lose that count). A second signal, with the
    event already set, raises :class:`KeyboardInterrupt` as usual. Outside the
    main thread (where Python cannot set signal handlers) the event is
    returned but never set by a signal.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        logger.debug("signal %d: stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _pause(seconds: float, stop: threading.Event | None) -> None:
    """Sleep ``seconds``, or until ``stop`` is set."""
    if stop is None:
        time.sleep(seconds)
    else:
        stop.wait(seconds)


def _send_paced(
    sender: MulticastSender,
    records: Iterable[bytes],
    tally: _Tally,
    *,
    rate: float,
    duration: float | None = None,
    count: int | None = None,
    t0: float | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Send ``records`` at ``rate`` per second (0: as fast as possible), counting them in ``tally``.

    Records go out in bursts of about :data:`_BURST_PERIOD` seconds' worth,
    burst ``k`` at ``t0 + sent_before_k / rate`` on the monotonic clock, so the
    mean rate is exact however coarse ``time.sleep`` is. Stops at the end of
    ``records``, after ``duration`` seconds from ``t0``, when ``tally`` counts
    ``count`` records, or when ``stop`` is set (between two bursts: ``tally``
    then counts exactly what was sent). ``tally`` may hold the records of
    earlier calls (earlier passes of ``send --loop``): the pace and ``count``
    include them.
    """
    start = time.monotonic() if t0 is None else t0
    deadline = None if duration is None else start + duration
    burst = _MAX_BURST if rate <= 0 else max(1, min(_MAX_BURST, int(rate * _BURST_PERIOD)))
    iterator = iter(records)
    monotonic = time.monotonic
    while stop is None or not stop.is_set():
        size = burst if count is None else min(burst, count - tally.records)
        if size <= 0:
            break
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            break
        if rate > 0:
            delay = start + tally.records / rate - monotonic()
            if delay > 0:
                _pause(delay, stop)
            elif delay < -_MAX_LAG:
                start -= delay + _MAX_LAG  # the machine stalled: do not flood to catch up
        if (deadline is not None and monotonic() >= deadline) or (stop is not None and stop.is_set()):
            break
        sender.send_records(chunk)
        tally.add(chunk)


def _renumbered(records: Iterable[bytes], offset: int) -> Iterator[bytes]:
    """``records`` with ``offset`` added to each readout id (modulo 2**32)."""
    if offset == 0:
        yield from records
        return
    for record in records:
        if len(record) < RECORD_HEADER_SIZE:
            yield record
            continue
        rid = (int.from_bytes(record[3:7], "little") + offset) & 0xFFFFFFFF
        yield record[:3] + rid.to_bytes(4, "little") + record[7:]


# --------------------------------------------------------------------------
# send
# --------------------------------------------------------------------------


def _add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """The pacing options of the commands that send (send, simulate)."""
    parser.add_argument(
        "--rate",
        type=_rate,
        default=DEFAULT_RATE,
        metavar="HZ",
        help=f"readouts per second (default {DEFAULT_RATE:.0f}; 0 sends as fast as possible)",
    )
    parser.add_argument("--duration", type=_positive_float, metavar="S", help="stop after S seconds")
    parser.add_argument("--count", type=_count, metavar="N", help="stop after N readouts")
    parser.add_argument("--ttl", type=int, default=2, help="multicast TTL (default 2)")


def _add_send_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=fileio.run_path_arg, metavar="FILE.apx|FILE.log", help="the .apx (or legacy .log) file to replay")
    _add_stream_arguments(parser)
    parser.add_argument(
        "--loop",
        action="store_true",
        help="replay the file again and again (until Ctrl-C, --duration or --count), renumbering "
        "the readout ids so that they stay consecutive",
    )


class _LastId:
    """Pass records through, remembering the readout id of the last one."""

    def __init__(self) -> None:
        self.last: int | None = None

    def watch(self, records: Iterable[bytes]) -> Iterator[bytes]:
        for record in records:
            self.last = int.from_bytes(record[3:7], "little")
            yield record


def _check_apx_readable(path: Path) -> None:
    """Fail before anything is sent if ``path`` is missing or not an .apx file."""
    if not path.exists():
        raise CliError(f"{path}: no such file")
    if not path.is_file():
        raise CliError(f"{path}: not a file")
    with fileio.apx_open(path, "r") as reader:
        logger.debug("header of %s: %s", path, reader.header)


def _run_send(args: argparse.Namespace) -> int:
    path: Path = args.file
    _check_apx_readable(path)
    tally = _Tally()
    passes = truncated = 0
    next_id: int | None = None
    interrupted = False
    t0 = time.monotonic()
    with (
        MulticastSender(args.group, args.port, args.ttl) as sender,
        warnings.catch_warnings(),
        _stop_on_signals() as stop,
    ):
        # A truncated last record is reported in the summary line instead.
        warnings.simplefilter("ignore", fileio.ApxTruncatedWarning)
        try:
            while not stop.is_set():
                with fileio.apx_open(path, "r") as reader:
                    records = iter(reader.records())
                    first = next(records, None)
                    if first is None:
                        if passes == 0:
                            raise CliError(f"{path}: holds no readout to send")
                        break
                    first_id = int.from_bytes(first[3:7], "little")
                    # Later passes go on from the id after the last one sent.
                    offset = 0 if next_id is None else (next_id - first_id) & 0xFFFFFFFF
                    watcher = _LastId()
                    stream = watcher.watch(_renumbered(itertools.chain([first], records), offset))
                    _send_paced(
                        sender, stream, tally, rate=args.rate, duration=args.duration, count=args.count, t0=t0, stop=stop
                    )
                    truncated = reader.truncated_bytes
                passes += 1
                if watcher.last is not None:
                    next_id = (watcher.last + 1) & 0xFFFFFFFF
                if not args.loop:
                    break
                if args.count is not None and tally.records >= args.count:
                    break
                if args.duration is not None and time.monotonic() - t0 >= args.duration:
                    break
        except KeyboardInterrupt:
            interrupted = True
        interrupted = interrupted or stop.is_set()
    tail = f"; the file ends with an incomplete record ({truncated} bytes, not sent)" if truncated else ""
    destination = f"to {sender.group}:{sender.port}, {passes} pass{'es' if passes != 1 else ''} over {path}"
    _print_sent(tally, t0, destination, interrupted, tail)
    return 0


# --------------------------------------------------------------------------
# simulate
# --------------------------------------------------------------------------


def _add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_stream_arguments(parser)
    parser.add_argument("--seed", type=int, default=None, help="random seed (the same seed sends the same bytes)")
    parser.add_argument(
        "--hits-per-readout", type=float, default=1.0, metavar="X", help="mean number of hits per readout (default 1)"
    )
    parser.add_argument(
        "--faults",
        type=_faults_arg,
        default={},
        metavar="NAME=P,...",
        help="per-readout fault probabilities, e.g. split=0.01,skip_ids=0.001 (names: "
        + ", ".join(f.name for f in dataclasses.fields(Faults))
        + ")",
    )


def _run_simulate(args: argparse.Namespace) -> int:
    try:
        simulator = AstroPix4Simulator(
            seed=args.seed,
            hits_per_readout=args.hits_per_readout,
            faults=args.faults or None,
            start_timestamp=time.time_ns(),
            rate_hz=args.rate if args.rate > 0 else 1.0e6,
        )
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc), code=2) from None
    skipped = 0
    chunk = 1000 if args.rate <= 0 else max(1, min(1000, int(args.rate * 0.05)))

    def stream() -> Iterator[bytes]:
        nonlocal skipped
        while True:
            run = simulator.generate(chunk)
            skipped += run.lost
            yield from run.records

    tally = _Tally()
    interrupted = False
    t0 = time.monotonic()
    with MulticastSender(args.group, args.port, args.ttl) as sender, _stop_on_signals() as stop:
        try:
            _send_paced(
                sender, stream(), tally, rate=args.rate, duration=args.duration, count=args.count, t0=t0, stop=stop
            )
        except KeyboardInterrupt:
            interrupted = True
        interrupted = interrupted or stop.is_set()
    destination = (
        f"of simulated data to {sender.group}:{sender.port} (seed {args.seed}, about {skipped} readout ids skipped on purpose)"
    )
    _print_sent(tally, t0, destination, interrupted)
    return 0


# --------------------------------------------------------------------------
# record
# --------------------------------------------------------------------------


def _add_record_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=_apx_path, metavar="OUT.apx", help="the .apx file to write")
    parser.add_argument("--duration", type=_positive_float, metavar="S", help="stop after S seconds (default: Ctrl-C)")
    parser.add_argument("--count", type=_count, metavar="N", help="stop after N readouts")
    parser.add_argument("--force", action="store_true", help="overwrite OUT.apx if it exists")
    parser.add_argument(
        "--buffer-size",
        type=_count,
        default=200_000,
        metavar="N",
        help="readouts held between two writes before new ones are dropped (default 200000)",
    )


def _run_record(args: argparse.Namespace) -> int:
    from .listener import Listener

    path: Path = args.file
    if path.exists() and not args.force:
        raise CliError(f"{path} exists; use --force to overwrite it")
    if path.exists() and not path.is_file():
        raise CliError(f"{path}: not a file")
    if not path.parent.is_dir():
        raise CliError(f"{path.parent}: no such folder")
    listener = Listener(AstroPix4Readout, args.group, args.port, buffer_size=args.buffer_size)
    listener.start()  # a port in use fails here, before the file is created
    group, port = listener.address()
    started = datetime.datetime.now(datetime.timezone.utc)
    header = {
        "readout_uid": AstroPix4Readout.uid(),
        "recorded_by": f"{PROG} {__version__}",
        "group": group,
        "port": port,
        "start_time": started.isoformat(),
        "start_time_ns": time.time_ns(),
    }
    recorded = nbytes = 0
    left_over = 0
    interrupted = False
    t0 = time.monotonic()
    emit(f"recording {group}:{port} to {path} (Ctrl-C to stop)", file=sys.stderr)
    try:
        with fileio.apx_open(path, "w", header=header) as writer:

            def write(records: list[bytes]) -> None:
                nonlocal recorded, nbytes, left_over
                if args.count is not None:
                    room = args.count - recorded
                    left_over += max(0, len(records) - room)
                    records = records[: max(0, room)]
                for record in records:
                    writer.write_record(record)
                    nbytes += len(record)
                recorded += len(records)

            try:
                while True:
                    if args.count is not None and recorded >= args.count:
                        break
                    if args.duration is not None and time.monotonic() - t0 >= args.duration:
                        break
                    records = listener.drain()
                    if records:
                        write(records)
                    else:
                        time.sleep(_RECORD_POLL)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                listener.stop()
            write(listener.drain())
    finally:
        listener.stop()
    seconds = time.monotonic() - t0
    stats = listener.stats()
    reasons = ", ".join(f"{k} {v}" for k, v in stats.malformed_by_reason.items() if v)
    note = " (interrupted)" if interrupted else ""
    extra = f", {left_over} received after --count not written" if left_over else ""
    emit(
        f"recorded {_summary_rate(recorded, seconds)}, {nbytes} bytes, from {group}:{port} to {path}{note}; "
        f"lost {stats.lost}, out of order {stats.out_of_order}, restarts {stats.restarts}, "
        f"dropped {stats.dropped}, malformed {stats.malformed}{f' ({reasons})' if reasons else ''}{extra}"
    )
    return 0


# --------------------------------------------------------------------------
# watch
# --------------------------------------------------------------------------

#: Default time between two updates of ``watch`` (s).
DEFAULT_WATCH_REFRESH = 1.0
#: ANSI: move the cursor to the start of the line ``n`` lines up / clear to the end of the screen.
_CURSOR_UP = "\x1b[{n}F"
_CLEAR_BELOW = "\x1b[J"


def _add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--refresh",
        type=_positive_float,
        default=DEFAULT_WATCH_REFRESH,
        metavar="S",
        help=f"seconds between two updates (default {DEFAULT_WATCH_REFRESH:g})",
    )
    parser.add_argument(
        "--lines",
        action="store_true",
        help="print one line per update even on a terminal (the default when stdout is not a terminal); "
        "on a terminal the default is the whole table, redrawn in place",
    )


class _LineView:
    """``watch`` output as one line per update (a log, a pipe, ``--lines``)."""

    def show(self, status: Status) -> None:
        """Print one line for ``status``."""
        emit(f"{time.strftime('%H:%M:%S')} {status.one_line()}")


class _BlockView:
    """``watch`` output as the status table, redrawn in place on a terminal.

    Parameters
    ----------
    title : str
        The first line of the block (the address watched).
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self._height = 0

    @staticmethod
    def _fit(status: Status, room: int) -> list[str]:
        """The table's lines, at most ``room`` of them: a block taller than the screen cannot be redrawn.

        Rows at zero are left out first, from the bottom up (a bad counter is
        never zero); then the block is cut.
        """
        lines = list(status.text_block())
        if len(lines) <= room:
            return lines
        rows = list(status.rows)
        hidden = 0
        if len(rows) == len(lines):  # one line per row, in order
            for k in reversed(range(len(rows))):
                if len(lines) - hidden < room:
                    break
                if rows[k].value == 0:
                    lines[k] = ""
                    hidden += 1
            lines = [line for line in lines if line]
            lines.append(f"({hidden} counters at zero not shown)")
        if len(lines) > room:
            lines = [*lines[: room - 1], f"... {len(lines) - room + 1} more rows (a taller terminal shows them)"]
        return lines

    def show(self, status: Status) -> None:
        """Draw the table of ``status`` over the previous one."""
        room = max(3, shutil.get_terminal_size().lines - 2)  # the title, and the line the cursor ends on
        lines = [f"{self.title}  {time.strftime('%H:%M:%S')}", *self._fit(status, room)]
        up = _CURSOR_UP.format(n=self._height) if self._height else ""
        emit(up + "\n".join(line + "\x1b[K" for line in lines) + _CLEAR_BELOW)
        self._height = len(lines)


def _watch_view(args: argparse.Namespace, title: str) -> _LineView | _BlockView:
    """Lines for a pipe, a file or ``--lines``; a redrawn block for a terminal."""
    if args.lines or not sys.stdout.isatty():
        return _LineView()
    return _BlockView(title)


def _run_watch(args: argparse.Namespace) -> int:
    # Imported here: the other commands do not need the engine's decoding and histogram stack.
    from .engine import MonitorEngine

    engine = MonitorEngine(group=args.group, port=args.port, refresh_interval=args.refresh)
    engine.start()  # a port in use fails here, as one line (main)
    try:
        group, port = engine.address()
        emit(f"watching UDP {group}:{port} (Ctrl-C to stop)", file=sys.stderr)
        view = _watch_view(args, f"UDP {group}:{port}")
        with _stop_on_signals() as stop:
            while True:
                view.show(engine.status())
                if stop.wait(args.refresh):
                    break
    finally:
        engine.stop()
    emit(f"stopped: {engine.status().one_line()}")
    return 0


# --------------------------------------------------------------------------
# hub
# --------------------------------------------------------------------------

#: Where ``hub`` publishes by default (loopback: only this machine can attach).
DEFAULT_HUB_PUBLISH = "tcp://127.0.0.1:5557"


def _add_hub_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--publish",
        default=DEFAULT_HUB_PUBLISH,
        metavar="URL",
        help=f"ZeroMQ endpoint viewers attach to (default {DEFAULT_HUB_PUBLISH}: this machine only; "
        "tcp://0.0.0.0:5557 lets other hosts attach)",
    )
    parser.add_argument(
        "--command",
        dest="command_endpoint",
        metavar="URL",
        help="endpoint of the command socket (default: the publish port + 1)",
    )
    parser.add_argument(
        "--refresh",
        type=_positive_float,
        default=0.5,
        metavar="S",
        help="seconds between two published states (default 0.5)",
    )
    parser.add_argument("--token", metavar="T", help="the command token (default: a new random one, printed)")


def _run_hub(args: argparse.Namespace) -> int:
    # Imported here: the other commands need neither pyzmq nor the engine.
    from .engine import MonitorEngine
    from .hub import HubPublisher

    engine = MonitorEngine(group=args.group, port=args.port, refresh_interval=args.refresh)
    engine.start()  # a UDP port in use fails here, as one line (main)
    publisher = None
    try:
        publisher = HubPublisher(
            engine, args.publish, command=args.command_endpoint, token=args.token, refresh_interval=args.refresh
        ).start()  # a TCP port in use: HubAddressInUseError, one line (main)
        group, port = engine.address()
        emit(f"receiving UDP {group}:{port}: {engine.exposure()}")
        emit(f"publish {publisher.publish_url}")
        emit(f"command {publisher.command_url}")
        emit(f"token {publisher.token}")
        emit(f"attach: {publisher.exposure()} (Ctrl-C to stop)")
        with _stop_on_signals() as stop:
            while not stop.wait(0.5):
                if not publisher.running:
                    raise CliError("the hub's publisher thread ended (see the log)")
    finally:
        if publisher is not None:
            publisher.stop()
        engine.stop()
    emit(
        f"hub stopped: {publisher.states_published} states and {publisher.record_batches_published} record batches "
        f"published, commands {publisher.accepted_commands} accepted, {publisher.refused_commands} refused; "
        f"{engine.status().one_line()}"
    )
    return 0


# --------------------------------------------------------------------------
# The command table and main()
# --------------------------------------------------------------------------

#: The sub-commands, in the order of ``--help``. One line registers one command.
COMMANDS: list[Command] = [
    Command("send", "replay an .apx file over UDP", _add_send_arguments, _run_send),
    Command("simulate", "stream synthetic AstroPix 4 readouts over UDP", _add_simulate_arguments, _run_simulate),
    Command("record", "receive readouts and write them to an .apx file", _add_record_arguments, _run_record),
    Command("watch", "show the monitor's counters live in the terminal (no browser)", _add_watch_arguments, _run_watch),
    Command("convert", "convert a legacy DAQ .log file to an .apx file", "astropix_nbmonitor.legacy:add_convert_arguments", "astropix_nbmonitor.legacy:run_convert", address_options=False),
    Command(
        "hub",
        "receive and histogram once, publish the state over ZeroMQ for any number of viewers",
        _add_hub_arguments,
        _run_hub,
    ),
    Command(
        "demo",
        "start JupyterLab on the example notebooks (needs jupyterlab)",
        "astropix_nbmonitor.app:add_demo_arguments",
        "astropix_nbmonitor.app:run_demo",
        address_options=False,
    ),
    Command(
        "serve",
        "show the monitor of one address as a Voila dashboard (needs voila)",
        "astropix_nbmonitor.app:add_serve_arguments",
        "astropix_nbmonitor.app:run_serve",
        address_options=False,
    ),
]


def _resolve(target: _AnyFn | str) -> _AnyFn | None:
    """A ``"module:function"`` string to the function; None if the module is missing."""
    if callable(target):
        return target
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            logger.debug("command function %s not available: %s", target, exc)
            return None
        raise
    return getattr(module, attribute)


def _add_address_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--group",
        type=group_arg,
        default=LOCAL_HOST,
        help=f"IPv4 address: {LOCAL_HOST} (default) for this machine, or a multicast group such as 239.1.1.1",
    )
    parser.add_argument("--port", type=port_arg, default=DEFAULT_PORT, help=f"UDP port (default {DEFAULT_PORT})")


def build_parser(commands: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    """The argument parser with every available sub-command.

    Each sub-command's run function is stored as ``args.run``.
    """
    parser = _Parser(prog=PROG, description="AstroPix online monitor: data transport and Jupyter launchers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    names: list[str] = []
    for command in COMMANDS if commands is None else commands:
        add_arguments = _resolve(command.add_arguments)
        run = _resolve(command.run)
        if add_arguments is None or run is None:
            continue
        sub_parser = sub.add_parser(command.name, help=command.help, description=command.help)
        if command.address_options:
            _add_address_options(sub_parser)
        add_arguments(sub_parser)
        sub_parser.set_defaults(run=run)
        names.append(command.name)
    parser.set_defaults(command_names=names)
    return parser


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, (AddressInUseError,)) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return str(exc) or type(exc).__name__


class _Terminate(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminate


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error(f"missing command: one of {', '.join(parser.get_default('command_names'))}")
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if args.verbose:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose > 1 else logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        )
    prog = f"{PROG} {args.command}"
    handler_set = False
    previous: Any = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        handler_set = True
    try:
        return int(args.run(args) or 0)
    except CliError as exc:
        if args.debug:
            raise
        emit(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.code
    except (InvalidAddressError, AddressInUseError, OSError, ValueError) as exc:
        if args.debug:
            raise
        emit(f"{prog}: error: {_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        emit(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        if handler_set:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
