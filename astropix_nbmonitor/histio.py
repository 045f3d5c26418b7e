"""Save a monitor's histograms, counters and metadata to standard files, and load them back.

:func:`save_state` writes every histogram of an
:class:`~astropix_nbmonitor.engine.EngineState` (``hit_map``, ``tot_hist``,
``chip_hit_map``, ``chip_tot_hist``), its status table and metadata; the
format follows the extension:

``.json``
    One JSON object: ``{"format", "version", "histograms": {name: UHI},
    "status", "metadata"}``, each histogram in the UHI serialisation
    (``boost_histogram.serialization.to_uhi``, arrays as lists: ``uhi.io.json``).
``.zip``
    ``uhi.io.zip``: ``histograms/<name>.json`` and its ``.npy`` arrays per
    histogram, plus ``status.json``, ``metadata.json`` and ``index.json``
    (format, version, histogram names).
``.h5``, ``.hdf5`` (needs h5py)
    ``uhi.io.hdf5``: one group ``/histograms/<name>`` per histogram in the UHI
    HDF5 layout; ``/status`` and ``/metadata`` are scalar string datasets
    holding JSON text; the root group's attributes ``format`` and ``version``.
``.root`` (needs uproot)
    For a ROOT user: ``hit_map`` (TH2D, x column, y row), ``tot_hist`` (TH1D,
    TOT in us, under/overflow kept), and per chip that has hits
    ``chip_hit_map_chip<N>`` (TH2D) and ``chip_tot_hist_chip<N>`` (TH1D); bin
    contents are the counts (the errors ROOT shows are their square roots).
    ``status`` and ``metadata`` are TObjString objects holding JSON text. The
    exact histograms (integer storage, the 3-D per-chip maps) are also stored
    in the UHI layout, as one RNTuple per histogram in the directory ``uhi``
    (``uhi.io.uproot``); :func:`load` reads those, or the TH1/TH2 objects of a
    ROOT file without them.

:func:`load` gives a :class:`SavedRun` back: ``histograms`` under the same
names as ``EngineState.histograms``, ``status`` (a dict) and ``metadata``.
Nothing read is unpickled or evaluated: JSON, ``.npy`` without pickles, HDF5
datasets and ROOT streamers only.

h5py and uproot are optional (``pip install 'astropix-nbmonitor[files]'``)
and imported only when an .h5 or .root file is written or read.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import boost_histogram as bh
import numpy as np
from boost_histogram.serialization import from_uhi, to_uhi

from .engine import EngineState
from .status import Status

__all__ = ["EXTENSIONS", "FORMAT", "FORMAT_VERSION", "SavedRun", "load", "save", "save_state"]

logger = logging.getLogger(__name__)

#: The value of the ``format`` key of every file written here.
FORMAT = "astropix-nbmonitor saved state"
#: Its version.
FORMAT_VERSION = 1
#: The extensions written and read, by format.
EXTENSIONS = {".json": "json", ".zip": "zip", ".h5": "hdf5", ".hdf5": "hdf5", ".root": "root"}
#: The histograms split per chip in a ROOT file (3-D and 2-D per-chip histograms).
_PER_CHIP = ("chip_hit_map", "chip_tot_hist")
_EXTRA = "astropix-nbmonitor[files]"

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------
# What load gives back
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """Histograms, counters and metadata read from a file written by :func:`save_state`.

    Attributes
    ----------
    path : pathlib.Path
    histograms : dict of str to boost_histogram.Histogram
        The names of ``EngineState.histograms`` (``hit_map``, ``tot_hist``,
        ``chip_hit_map``, ``chip_tot_hist``).
    status : dict
        The counters (``Status.as_dict()`` when saved).
    metadata : dict
        ``saved_at``, ``state_time``, ``state_seq``, ``chips``, ``running``,
        ``histograms`` (names), ``rates`` (the rate history) and what the
        caller added (``address``, ``apx_header``...).
    """

    path: Path
    histograms: dict[str, bh.Histogram]
    status: dict[str, Any]
    metadata: dict[str, Any]

    @property
    def hit_map(self) -> bh.Histogram:
        """The hit map of all chips (axes column, row)."""
        return self.histograms["hit_map"]

    @property
    def tot_hist(self) -> bh.Histogram:
        """The TOT spectrum of all chips, in us."""
        return self.histograms["tot_hist"]

    def status_table(self) -> Status:
        """The counters as a :class:`~astropix_nbmonitor.status.Status` (labels, bad values)."""
        return Status.from_dict(self.status, taken_at=self.metadata.get("state_time"))


# --------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------


def save(source: Any, path: PathLike, *, header: Mapping[str, Any] | None = None,
         metadata: Mapping[str, Any] | None = None) -> Path:
    """Save a monitor, an engine or a state.

    Parameters
    ----------
    source : MonitorEngine, AbstractMonitor or EngineState
        Anything with ``state()`` (its ``address()`` is stored too), or a state.
    path : str or os.PathLike
        The file; its extension picks the format (:data:`EXTENSIONS`).
    header : mapping, optional
        The .apx header of the file being replayed, stored as ``apx_header``.
    metadata : mapping, optional
        More JSON-serialisable keys.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    extra: dict[str, Any] = {}
    state = source
    if not isinstance(source, EngineState):
        state = source.state()
        address = getattr(source, "address", None)
        if callable(address):
            group, port = address()
            extra["address"] = {"group": str(group), "port": int(port)}
    if header is not None:
        extra["apx_header"] = dict(header)
    extra.update(metadata or {})
    return save_state(state, path, metadata=extra)


def save_state(state: EngineState, path: PathLike, *, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write every histogram, the status and the metadata of ``state`` to ``path``.

    Parameters
    ----------
    state : EngineState
        What to save.
    path : str or os.PathLike
        ``.json``, ``.zip``, ``.h5``/``.hdf5`` or ``.root`` (see the module's text).
    metadata : mapping, optional
        JSON-serialisable keys added to the metadata (``address``, ``apx_header``...).

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        For another extension.
    ImportError
        When the format's optional package (h5py, uproot) is missing; the
        message names the extra to install.
    TypeError
        If the metadata cannot be stored as JSON.
    """
    target = Path(path)
    kind = _kind(target)
    status = _jsonable(state.status.as_dict(), "status")
    meta = _jsonable({**_state_metadata(state), **dict(metadata or {})}, "metadata")
    writer = {"json": _write_json, "zip": _write_zip, "hdf5": _write_hdf5, "root": _write_root}[kind]
    writer(target, state.histograms, status, meta)
    logger.info("saved %d histograms, status and metadata to %s", len(state.histograms), target)
    return target


def _kind(path: Path) -> str:
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        msg = f"{path}: unknown extension {path.suffix!r}; use one of {', '.join(EXTENSIONS)}"
        raise ValueError(msg)
    return kind


def _state_metadata(state: EngineState) -> dict[str, Any]:
    """The metadata every file holds: times, chips, names, the rate history."""
    now = datetime.datetime.now(datetime.timezone.utc)
    taken = datetime.datetime.fromtimestamp(state.time, datetime.timezone.utc)
    rates = np.asarray(state.rates, dtype=float)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "saved_at": now.isoformat(timespec="seconds"),
        "state_time": float(state.time),
        "state_time_utc": taken.isoformat(timespec="seconds"),
        "state_seq": int(state.seq),
        "chips": [int(c) for c in state.chips],
        "running": bool(state.running),
        "histograms": list(state.histograms),
        "rates": {
            "seconds": rates[0].tolist() if rates.size else [],
            "readouts_per_s": rates[1].tolist() if rates.size else [],
            "hits_per_s": rates[2].tolist() if rates.size else [],
        },
    }


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    msg = f"{type(obj).__name__} is not JSON serialisable"
    raise TypeError(msg)


def _jsonable(value: dict[str, Any], what: str) -> dict[str, Any]:
    """``value`` as plain JSON types (numpy scalars converted), or a clear TypeError."""
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as exc:
        msg = f"the {what} must be JSON-serialisable: {exc}"
        raise TypeError(msg) from None


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default)


def _write_json(path: Path, histograms: Mapping[str, bh.Histogram], status: dict, meta: dict) -> None:
    import uhi.io.json

    document = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "histograms": {name: to_uhi(h) for name, h in histograms.items()},
        "status": status,
        "metadata": meta,
    }
    path.write_text(json.dumps(document, default=uhi.io.json.default), encoding="utf-8")


def _write_zip(path: Path, histograms: Mapping[str, bh.Histogram], status: dict, meta: dict) -> None:
    import uhi.io.zip

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        index = {"format": FORMAT, "version": FORMAT_VERSION, "histograms": list(histograms)}
        zf.writestr("index.json", _dumps(index))
        for name, hist in histograms.items():
            uhi.io.zip.write(zf, f"histograms/{name}", to_uhi(hist))
        zf.writestr("status.json", _dumps(status))
        zf.writestr("metadata.json", _dumps(meta))


def _write_hdf5(path: Path, histograms: Mapping[str, bh.Histogram], status: dict, meta: dict) -> None:
    h5py = _optional("h5py", "HDF5 files (.h5)")
    uhi_hdf5 = _optional("uhi.io.hdf5", "HDF5 files (.h5)", needs=("h5py",))
    with h5py.File(path, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = FORMAT_VERSION
        group = f.create_group("histograms")
        for name, hist in histograms.items():
            uhi_hdf5.write(group.create_group(name), to_uhi(hist))
        f.create_dataset("status", data=_dumps(status), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("metadata", data=_dumps(meta), dtype=h5py.string_dtype("utf-8"))


def _write_root(path: Path, histograms: Mapping[str, bh.Histogram], status: dict, meta: dict) -> None:
    uproot = _optional("uproot", "ROOT files (.root)")
    uhi_uproot = _optional("uhi.io.uproot", "ROOT files (.root)", needs=("uproot",))
    with uproot.recreate(path) as f:
        for name, hist in _root_histograms(histograms).items():
            f[name] = hist
        f["status"] = _dumps(status)
        f["metadata"] = _dumps(meta)
        exact = f.mkdir("uhi")
        for name, hist in histograms.items():
            uhi_uproot.write(exact, name, to_uhi(hist))


def _root_histograms(histograms: Mapping[str, bh.Histogram]) -> dict[str, bh.Histogram]:
    """The TH1D/TH2D a ROOT user opens: 1-D and 2-D as they are, per-chip ones split by chip."""
    out: dict[str, bh.Histogram] = {}
    for name, hist in histograms.items():
        if name in _PER_CHIP and hist.ndim >= 2:
            out.update(_split_by_chip(name, hist))
        elif hist.ndim <= 2:
            out[name] = _as_double(hist)
        else:
            logger.info("%s has %d axes: not written as a TH1/TH2 (kept in uhi/)", name, hist.ndim)
    return out


def _split_by_chip(name: str, hist: bh.Histogram) -> dict[str, bh.Histogram]:
    """One histogram per chip that has entries, named ``<name>_chip<N>``."""
    out = {}
    chip_axis = hist.axes[0]
    totals = hist.view(flow=True).reshape(len(chip_axis), -1).sum(axis=1)
    for index, total in enumerate(totals):
        if total:
            chip = int(chip_axis.value(index))
            out[f"{name}_chip{chip}"] = _as_double(hist[bh.loc(chip), ...])
    return out


def _as_double(hist: bh.Histogram) -> bh.Histogram:
    """The same histogram with double storage (ROOT's TH*D; TArray has no 64-bit integers)."""
    out = bh.Histogram(*hist.axes, storage=bh.storage.Double())
    out.view(flow=True)[...] = hist.view(flow=True)
    return out


def _optional(module: str, what: str, *, needs: tuple[str, ...] = ()) -> ModuleType:
    """Import an optional module (after the packages it ``needs``), or raise an ImportError naming the extra."""
    try:
        for name in needs:
            importlib.import_module(name)
        return importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or (needs or (module,))[0]
        msg = f"{what} need the optional package {missing}: pip install '{_EXTRA}'"
        raise ImportError(msg) from exc


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def load(path: PathLike) -> SavedRun:
    """Read a file written by :func:`save_state` (any of its formats).

    Raises
    ------
    ValueError
        For an unknown extension, or a file that is not one of these.
    ImportError
        When the format's optional package is missing.
    """
    source = Path(path)
    kind = _kind(source)
    reader = {"json": _read_json, "zip": _read_zip, "hdf5": _read_hdf5, "root": _read_root}[kind]
    histograms, status, meta = reader(source)
    logger.info("loaded %d histograms from %s", len(histograms), source)
    return SavedRun(source, histograms, status, meta)


def _arrays(ir: Any) -> Any:
    """A UHI dictionary read from JSON, with its array lists turned into numpy arrays."""
    import uhi.io.json

    if isinstance(ir, dict):
        return uhi.io.json.object_hook({k: _arrays(v) for k, v in ir.items()})
    if isinstance(ir, list):
        return [_arrays(v) for v in ir]
    return ir


def _histogram(ir: Mapping[str, Any]) -> bh.Histogram:
    return bh.Histogram(from_uhi(dict(ir)))


def _check_format(found: Any, path: Path) -> None:
    if found != FORMAT:
        msg = f"{path} was not written by astropix_nbmonitor.histio (format {found!r})"
        raise ValueError(msg)


def _read_json(path: Path) -> tuple[dict[str, bh.Histogram], dict, dict]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{path} is not JSON: {exc}"
        raise ValueError(msg) from None
    if not isinstance(document, dict):
        msg = f"{path} holds a JSON {type(document).__name__}, not an object"
        raise ValueError(msg)
    _check_format(document.get("format"), path)
    histograms = {name: _histogram(_arrays(ir)) for name, ir in document["histograms"].items()}
    return histograms, document.get("status", {}), document.get("metadata", {})


def _read_zip(path: Path) -> tuple[dict[str, bh.Histogram], dict, dict]:
    import uhi.io.zip

    try:
        with zipfile.ZipFile(path) as zf:
            index = json.loads(zf.read("index.json"))
            _check_format(index.get("format"), path)
            histograms = {name: _histogram(uhi.io.zip.read(zf, f"histograms/{name}")) for name in index["histograms"]}
            status = json.loads(zf.read("status.json"))
            meta = json.loads(zf.read("metadata.json"))
    except (zipfile.BadZipFile, KeyError) as exc:
        msg = f"{path} is not a saved state: {exc}"
        raise ValueError(msg) from None
    return histograms, status, meta


def _read_hdf5(path: Path) -> tuple[dict[str, bh.Histogram], dict, dict]:
    h5py = _optional("h5py", "HDF5 files (.h5)")
    uhi_hdf5 = _optional("uhi.io.hdf5", "HDF5 files (.h5)", needs=("h5py",))
    with h5py.File(path, "r") as f:
        _check_format(_text(f.attrs.get("format")), path)
        histograms = {name: _histogram(uhi_hdf5.read(group)) for name, group in f["histograms"].items()}
        status = json.loads(_text(f["status"][()]))
        meta = json.loads(_text(f["metadata"][()]))
    order = meta.get("histograms", list(histograms))
    return {name: histograms[name] for name in order if name in histograms}, status, meta


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_root(path: Path) -> tuple[dict[str, bh.Histogram], dict, dict]:
    uproot = _optional("uproot", "ROOT files (.root)")
    with uproot.open(path) as f:
        meta = json.loads(str(f["metadata"])) if "metadata" in f else {}
        status = json.loads(str(f["status"])) if "status" in f else {}
        if "uhi" in f:
            uhi_uproot = _optional("uhi.io.uproot", "ROOT files (.root)", needs=("uproot",))
            names = meta.get("histograms") or [key.split(";")[0] for key in f["uhi"].keys()]
            histograms = {name: _histogram(uhi_uproot.read(f["uhi"], name)) for name in names}
        else:
            histograms = {
                key.split(";")[0]: f[key].to_boost()
                for key, cls in f.classnames().items()
                if cls.startswith(("TH1", "TH2")) and "/" not in key
            }
    return histograms, status, meta
