"""Pixel masks: on screen, and written back in the DAQ's chip configuration (docs/format.md section 11).

A :class:`PixelMask` is a set of ``(chip_id, column, row)`` pixels. On screen
it leaves masked pixels out of the displayed hit map (:meth:`PixelMask.apply`
sets them to NaN, drawn in a neutral colour) and out of the displayed TOT
spectrum (:func:`tot_without_masked`), while the monitor's own histograms stay
complete; :meth:`PixelMask.masked_hits` counts what was left out.

For the DAQ, :func:`write_mask` sets the **comparator-disable** bit of every
masked pixel, bit ``row + 1`` of ``recconfig['col{column}'][1]``, in the chip
configuration YAML that astropix-python loads. Given the run's own file, only
those integers change: the file's text is edited in place (the value scalar of
each changed column, located by the YAML parser), so every other byte stays as
it was, comments and flow style included; the result is checked by loading it
again. :func:`read_mask` returns the pixels whose comparator-disable bit is set
(the *disabled* pixels: note that a DAQ file may disable almost every pixel,
as the real example ``config_v4_none_...yml`` does), :func:`enabled_pixels`
the others.

Several chips: a file with ``telescope: {nchips: N}`` and N > 1 holds one
section ``config_{i}`` per chip (astropix-python's layout), taken here to be
the chip whose hits carry ``chip_id == i``; a single-chip file has one section
``config``, which belongs to whichever chip id the caller names (0 by
default).

YAML support is optional: ``pip install 'astropix-nbmonitor[yaml]'`` (PyYAML).
Files are read with ``yaml.safe_load`` only; the positions of the integers to
edit come from ``yaml.compose`` with the safe loader (nodes only, nothing is
constructed).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

import boost_histogram as bh
import numpy as np

from .astropix4.layout import NUM_COLS, NUM_ROWS
from .noisy import NoisyPixel
from .windows import PixelTots

__all__ = [
    "PixelMask",
    "enabled_pixels",
    "read_mask",
    "tot_without_masked",
    "write_mask",
]

logger = logging.getLogger(__name__)

Pixel = tuple[int, int, int]
PixelLike = Union[Pixel, NoisyPixel]
ConfigSource = Union[str, "os.PathLike[str]", Mapping[str, Any]]

#: Bits of a recconfig word besides the row bits: row-injection (0), column injection and analog out (after the rows).
_EXTRA_RECCONFIG_BITS = 3
_CHIP_NAME = "astropix4"


def _yaml() -> Any:
    """PyYAML, imported on first use."""
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - PyYAML is in the test extra
        msg = "reading or writing chip configuration files needs PyYAML: pip install 'astropix-nbmonitor[yaml]'"
        raise ImportError(msg) from exc
    return yaml


# ---------------------------------------------------------------------------
# The mask
# ---------------------------------------------------------------------------


class PixelMask:
    """A set of masked ``(chip_id, column, row)`` pixels.

    Parameters
    ----------
    pixels : iterable, optional
        Initial pixels (tuples or :class:`~astropix_nbmonitor.noisy.NoisyPixel`).
    num_rows, num_cols : int
        The matrix; pixels outside it are refused.
    """

    def __init__(self, pixels: Iterable[PixelLike] = (), *, num_rows: int = NUM_ROWS, num_cols: int = NUM_COLS) -> None:
        self.num_rows = int(num_rows)
        self.num_cols = int(num_cols)
        self._pixels: set[Pixel] = set()
        self.add(pixels)

    # ------------------------------------------------------------------ the set
    def _as_pixel(self, item: PixelLike) -> Pixel:
        """One item as a checked ``(chip_id, column, row)``."""
        if isinstance(item, NoisyPixel):
            item = item.pixel
        try:
            chip, column, row = (int(v) for v in item)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            msg = f"a pixel is a (chip_id, column, row) tuple or a NoisyPixel, got {item!r}"
            raise ValueError(msg) from None
        if not (0 <= column < self.num_cols and 0 <= row < self.num_rows and chip >= 0):
            msg = f"pixel (chip_id={chip}, column={column}, row={row}) is outside the {self.num_cols} x {self.num_rows} matrix"
            raise ValueError(msg)
        return (chip, column, row)

    def _items(self, pixels: PixelLike | Iterable[PixelLike]) -> list[Pixel]:
        """One pixel or many, as checked tuples."""
        if isinstance(pixels, NoisyPixel):
            return [pixels.pixel]
        if isinstance(pixels, tuple) and len(pixels) == 3 and all(isinstance(v, (int, np.integer)) for v in pixels):
            return [self._as_pixel(pixels)]
        return [self._as_pixel(p) for p in pixels]  # type: ignore[union-attr]

    def add(self, pixels: PixelLike | Iterable[PixelLike]) -> None:
        """Mask one pixel or an iterable of them (tuples or NoisyPixel items)."""
        self._pixels.update(self._items(pixels))

    def remove(self, pixels: PixelLike | Iterable[PixelLike]) -> None:
        """Unmask one pixel or an iterable of them; pixels not masked are ignored."""
        self._pixels.difference_update(self._items(pixels))

    def clear(self) -> None:
        """Unmask every pixel."""
        self._pixels.clear()

    @property
    def masked_pixels(self) -> set[Pixel]:
        """A copy of the masked ``(chip_id, column, row)`` pixels."""
        return set(self._pixels)

    def chip_pixels(self, chip: int | None) -> set[tuple[int, int]]:
        """``(column, row)`` of the pixels masked on ``chip`` (None: on any chip)."""
        return {(c, r) for k, c, r in self._pixels if chip is None or k == int(chip)}

    def __contains__(self, item: object) -> bool:
        try:
            return self._as_pixel(item) in self._pixels  # type: ignore[arg-type]
        except ValueError:
            return False

    def __iter__(self) -> Iterator[Pixel]:
        return iter(sorted(self._pixels))

    def __len__(self) -> int:
        return len(self._pixels)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PixelMask):
            return self._pixels == other._pixels
        return NotImplemented

    def __repr__(self) -> str:
        return f"PixelMask({sorted(self._pixels)!r})"

    # ------------------------------------------------------------------ display
    def apply(self, counts: np.ndarray, chip: int | None = None, *, rows_first: bool = False) -> np.ndarray:
        """``counts`` as float64 with the masked pixels set to NaN, for display.

        Parameters
        ----------
        counts : array_like
            ``[column, row]`` counts (``rows_first=True``: ``[row, column]``, as
            ``EngineState.hit_counts`` draws them), or ``[chip, column, row]``.
        chip : int, optional
            The chip of a 2D map; None (the all-chips map): a pixel masked on
            any chip is NaN. Ignored for 3D counts, whose first index is the chip.
        """
        out = np.array(counts, dtype=np.float64)
        if out.ndim == 3:
            for k, c, r in self._pixels:
                if k < out.shape[0]:
                    out[k, c, r] = np.nan
            return out
        for c, r in self.chip_pixels(chip):
            if rows_first:
                out[r, c] = np.nan
            else:
                out[c, r] = np.nan
        return out

    def masked_hits(self, hit_map_counts: np.ndarray, chip: int | None = None) -> int:
        """Hits in masked pixels.

        ``[chip, column, row]`` counts: each masked pixel of its own chip.
        ``[column, row]`` counts: the pixels masked on ``chip`` (None: on any
        chip, each pixel once: what the displayed all-chips map leaves out).
        """
        counts = np.asarray(hit_map_counts)
        if counts.ndim == 3:
            return int(sum(counts[k, c, r] for k, c, r in self._pixels if k < counts.shape[0]))
        return int(sum(counts[c, r] for c, r in self.chip_pixels(chip)))


def tot_without_masked(
    tot_hist: bh.Histogram, pixel_tots: PixelTots, mask: PixelMask, chip: int | None = None
) -> bh.Histogram:
    """The TOT spectrum ``tot_hist`` of ``chip`` (None: all chips) minus the masked pixels' hits.

    The masked pixels' spectra come from ``pixel_tots``, filled with the same
    hits over the same time as ``tot_hist`` (the engine's cumulative TOT
    spectrum), so masking a pixel takes its hits out of the whole run, also
    those before it was masked. Hits outside the matrix stay in.
    """
    edges = np.asarray(tot_hist.axes[0].edges)
    if len(edges) != len(pixel_tots.tot_edges) or not np.allclose(edges, pixel_tots.tot_edges):
        msg = "tot_hist and pixel_tots must have the same TOT edges"
        raise ValueError(msg)
    pixels = [p for p in mask.masked_pixels if chip is None or p[0] == int(chip)]
    out = tot_hist.copy()
    out.view(flow=True)[...] = tot_hist.values(flow=True) - pixel_tots.sum_pixels(pixels)
    return out


# ---------------------------------------------------------------------------
# The chip configuration file
# ---------------------------------------------------------------------------


def _load(config: ConfigSource) -> tuple[dict[str, Any], str | None]:
    """The configuration as a dict (a deep copy), and its text when read from a file."""
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config)), None
    text = Path(config).read_text(encoding="utf-8")
    doc = _yaml().safe_load(text)
    if not isinstance(doc, dict):
        msg = f"{config}: not a chip configuration (a YAML mapping), got {type(doc).__name__}"
        raise ValueError(msg)
    return doc, text


def _chip_block(doc: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The name and block of the chip (``astropix4``, or the one ``astropix*`` key)."""
    names = [k for k, v in doc.items() if isinstance(k, str) and k.startswith("astropix") and isinstance(v, dict)]
    if _CHIP_NAME in names:
        return _CHIP_NAME, doc[_CHIP_NAME]
    if len(names) == 1:
        return names[0], doc[names[0]]
    msg = f"no single astropix chip block in the configuration (top-level keys: {list(doc)})"
    raise ValueError(msg)


def _geometry(block: Mapping[str, Any]) -> tuple[int, int]:
    """``(cols, rows)`` of the chip block (AstroPix 4's when absent)."""
    geometry = block.get("geometry") or {}
    return int(geometry.get("cols", NUM_COLS)), int(geometry.get("rows", NUM_ROWS))


def _sections(block: Mapping[str, Any], chip_id: int | None) -> dict[int, str]:
    """``{chip_id: section key}`` of the chips addressed (``config`` or ``config_{i}``)."""
    nchips = int((block.get("telescope") or {}).get("nchips", 1))
    if nchips <= 1:
        if chip_id is None:
            msg = "a single-chip configuration needs the chip_id its section belongs to, not None"
            raise ValueError(msg)
        return {int(chip_id): "config"}
    chips = range(nchips) if chip_id is None else [int(chip_id)]
    sections = {c: f"config_{c}" for c in chips}
    missing = [key for key in sections.values() if key not in block]
    if missing or not 0 <= min(sections) <= max(sections) < nchips:
        msg = f"chip_id {chip_id} not in this {nchips}-chip configuration (sections missing: {missing})"
        raise ValueError(msg)
    return sections


def _recconfig(block: Mapping[str, Any], section: str) -> dict[str, Any]:
    """The ``recconfig`` mapping of a section."""
    try:
        rec = block[section]["recconfig"]
    except (KeyError, TypeError):
        msg = f"the configuration has no {section}: recconfig: block"
        raise ValueError(msg) from None
    return rec


def _disabled_in(rec: Mapping[str, Any], chip: int, cols: int, rows: int) -> set[Pixel]:
    """Pixels of one recconfig whose comparator-disable bit (``row + 1``) is set."""
    out = set()
    for column in range(cols):
        word = int(rec[f"col{column}"][1])
        out.update((chip, column, row) for row in range(rows) if word >> (row + 1) & 1)
    return out


def read_mask(config: ConfigSource, chip_id: int | None = 0) -> PixelMask:
    """The **disabled** pixels of a chip configuration: comparator-disable bit set.

    Parameters
    ----------
    config : path or mapping
        A chip configuration YAML file, or its content as loaded.
    chip_id : int or None
        The chip: its ``config_{chip_id}`` section in a multi-chip file, the
        chip id given to the single ``config`` section otherwise. None (multi-chip
        files only): every chip.
    """
    doc, _ = _load(config)
    _, block = _chip_block(doc)
    cols, rows = _geometry(block)
    mask = PixelMask(num_rows=rows, num_cols=cols)
    for chip, section in _sections(block, chip_id).items():
        mask.add(_disabled_in(_recconfig(block, section), chip, cols, rows))
    return mask


def enabled_pixels(config: ConfigSource, chip_id: int | None = 0) -> set[Pixel]:
    """The enabled pixels (comparator-disable bit clear) of a chip configuration; see :func:`read_mask`."""
    doc, _ = _load(config)
    _, block = _chip_block(doc)
    cols, rows = _geometry(block)
    chips = _sections(block, chip_id)
    every = {(chip, c, r) for chip in chips for c in range(cols) for r in range(rows)}
    return every - read_mask(doc, chip_id).masked_pixels


def _minimal_config(cols: int, rows: int) -> dict[str, Any]:
    """A single-chip AstroPix 4 document: geometry and every pixel enabled, nothing else."""
    width = rows + _EXTRA_RECCONFIG_BITS
    return {
        _CHIP_NAME: {
            "telescope": {"nchips": 1},
            "geometry": {"cols": cols, "rows": rows},
            "config": {"recconfig": {f"col{c}": [width, 0] for c in range(cols)}},
        }
    }


def _set_mask_bits(block: dict[str, Any], mask: PixelMask, sections: dict[int, str]) -> list[tuple[str, str, int]]:
    """Set the comparator-disable bits of the masked pixels; the ``(section, colN, new value)`` changed."""
    cols, rows = _geometry(block)
    changed = []
    for chip, section in sections.items():
        rec = _recconfig(block, section)
        for column in range(cols):
            masked_rows = [r for c, r in mask.chip_pixels(chip) if c == column]
            if any(r >= rows for r in masked_rows):
                msg = f"a masked pixel of column {column} is outside the file's {rows} rows"
                raise ValueError(msg)
            key = f"col{column}"
            old = int(rec[key][1])
            new = old
            for r in masked_rows:
                new |= 1 << (r + 1)
            if new != old:
                rec[key][1] = new
                changed.append((section, key, new))
    return changed


def write_mask(mask: PixelMask, path: str | os.PathLike[str], config: ConfigSource | None = None, chip_id: int | None = 0) -> Path:
    """Write the mask as a chip configuration the DAQ loads (docs/format.md section 11).

    Sets bit ``row + 1`` of ``recconfig['col{column}'][1]`` for every masked
    pixel of the chip(s) addressed; never clears a bit (a pixel the
    configuration disables stays disabled).

    Parameters
    ----------
    mask : PixelMask
        The pixels to mask.
    path : path
        The file to write (may be the configuration file itself).
    config : path or mapping, optional
        The run's own configuration. From a file, only the changed integers of
        its text are rewritten, every other byte stays; from a mapping, the
        document is dumped in the DAQ's style (block style, key order kept).
        None: a minimal single-chip ``astropix4:`` document (telescope,
        geometry and a recconfig with every non-masked pixel enabled, all
        injection and analog-output bits off) to merge into a full one.
    chip_id : int or None
        Which chip's masked pixels to write: into ``config_{chip_id}`` of a
        multi-chip file, into the single ``config`` section otherwise. None
        (multi-chip files only): every chip into its own section.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    if config is None:
        doc, text = _minimal_config(mask.num_cols, mask.num_rows), None
        chip_id = 0 if chip_id is None else chip_id
    else:
        doc, text = _load(config)
    name, block = _chip_block(doc)
    changed = _set_mask_bits(block, mask, _sections(block, chip_id))
    out = _render(doc, text, name, changed)
    target = Path(path)
    target.write_text(out, encoding="utf-8")
    logger.info("wrote a mask of %d changed columns to %s", len(changed), target)
    return target


def _dump(doc: Mapping[str, Any]) -> str:
    """The document in astropix-python's own style (block style, key order kept)."""
    return _yaml().safe_dump(doc, sort_keys=False, default_flow_style=False)


def _render(doc: dict[str, Any], text: str | None, name: str, changed: list[tuple[str, str, int]]) -> str:
    """The new file's text: ``text`` with the changed integers edited, or a dump."""
    if text is None:
        return _dump(doc)
    edited = _edit_text(text, name, changed)
    if edited is not None and _yaml().safe_load(edited) == doc:
        return edited
    logger.warning("could not edit the configuration's text in place; writing it re-dumped (formatting not kept)")
    return _dump(doc)


def _edit_text(text: str, name: str, changed: list[tuple[str, str, int]]) -> str | None:
    """``text`` with each changed recconfig value replaced in place; None when a value cannot be located."""
    yaml = _yaml()
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    spans = []
    for section, key, value in changed:
        node = _find_node(root, (name, section, "recconfig", key))
        if not isinstance(node, yaml.SequenceNode) or len(node.value) != 2:
            return None
        scalar = node.value[1]
        if not isinstance(scalar, yaml.ScalarNode) or scalar.style is not None:
            return None
        spans.append((scalar.start_mark.index, scalar.end_mark.index, _int_like(scalar.value, value)))
    for start, end, new in sorted(spans, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _find_node(node: Any, path: tuple[str, ...]) -> Any:
    """The node at ``path`` of mapping keys, or None."""
    yaml = _yaml()
    for key in path:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)
    return node


def _int_like(old: str, value: int) -> str:
    """``value`` written in the base of the scalar ``old`` (``0b``, ``0x`` or decimal)."""
    prefix = old.strip().lower()[:2]
    if prefix == "0b":
        return f"0b{value:b}"
    if prefix == "0x":
        return f"0x{value:x}"
    return str(value)
