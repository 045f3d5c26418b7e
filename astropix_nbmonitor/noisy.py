"""Noisy pixels: pixels that fire far more often than the matrix's typical pixel.

The rule, per chip: a pixel is **noisy** when it has at least ``min_hits``
hits (default 20) **and** more than ``factor`` (default 10) times the median
hit count of the pixels of that chip that fired at all (hits > 0) **and**,
with ``local=True`` (the default), more than ``factor`` times the median of
its neighbours (the up to 8 pixels around it, fired or not).

- The median of the pixels that fired, rather than of all pixels, keeps the
  rule working when a narrow beam leaves most of the matrix empty.
- The ``min_hits`` floor keeps a pixel with a handful of hits on an almost
  empty matrix from being called noisy.
- The neighbours keep a beam spot's hot centre from being called noisy: a
  beam is smooth over a pixel's neighbours, a noisy pixel stands alone. This
  is needed: the simulator's default beam (sigma 5 rows x 3 columns over a
  35 x 16 matrix) puts 13 times the median of the fired pixels into its
  centre pixel, and the median rule alone flags 16 pixels of the beam's core
  (20,000 readouts, seed 1). A noisy pixel inside
  the beam is found when it has more than ``factor`` times its neighbours;
  ``local=False`` gives the median rule alone.

Counts taken over a window (e.g. the last 60 s of
:class:`~astropix_nbmonitor.windows.WindowedAccumulator`) find a pixel that
turned noisy recently; the whole-run map finds the steady ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["NoisyPixel", "find_noisy"]


@dataclasses.dataclass(frozen=True)
class NoisyPixel:
    """A pixel found noisy.

    Attributes
    ----------
    chip_id, column, row : int
        Where it is.
    hits : int
        Its hits in the counts examined.
    rate : float
        ``hits / seconds``: hits per second over the time the counts cover.
    """

    chip_id: int
    column: int
    row: int
    hits: int
    rate: float

    @property
    def pixel(self) -> tuple[int, int, int]:
        """``(chip_id, column, row)``, the key of a :class:`~astropix_nbmonitor.masks.PixelMask`."""
        return (self.chip_id, self.column, self.row)


def find_noisy(
    hit_map_counts: np.ndarray,
    seconds: float,
    *,
    factor: float = 10.0,
    min_hits: int = 20,
    chip_id: int = 0,
    local: bool = True,
) -> list[NoisyPixel]:
    """The noisy pixels of a hit map, busiest first.

    Parameters
    ----------
    hit_map_counts : array_like
        Hit counts indexed ``[column, row]`` (the layout of
        ``hit_map().values()``; note that ``HitAccumulator.hit_map_counts()``
        is rows first, transpose it), or ``[chip, column, row]`` (the layout of
        the chip hit map's values and of ``WindowedAccumulator.counts()``),
        where the first index is the chip id.
    seconds : float
        The time the counts cover (> 0), for the rates.
    factor : float
        A noisy pixel has more than ``factor`` times the median hits of the
        chip's pixels that fired.
    min_hits : int
        ... and at least ``min_hits`` hits.
    chip_id : int
        The chip id of a ``[column, row]`` map (ignored for 3D counts).
    local : bool
        Also require more than ``factor`` times the median of the pixel's
        neighbours (see the module's rule).

    Returns
    -------
    list of NoisyPixel
        Sorted by hits, most first (ties by chip, column, row).
    """
    counts = np.asarray(hit_map_counts)
    if not seconds > 0:
        msg = f"seconds must be > 0, got {seconds!r}"
        raise ValueError(msg)
    if counts.ndim == 2:
        planes = [(int(chip_id), counts)]
    elif counts.ndim == 3:
        planes = [(chip, counts[chip]) for chip in range(counts.shape[0])]
    else:
        msg = f"hit_map_counts must be (column, row) or (chip, column, row), got shape {counts.shape}"
        raise ValueError(msg)
    found = [pixel for chip, plane in planes for pixel in _noisy_in_chip(plane, chip, seconds, factor, min_hits, local)]
    found.sort(key=lambda p: (-p.hits, p.chip_id, p.column, p.row))
    return found


def _noisy_in_chip(
    plane: np.ndarray, chip: int, seconds: float, factor: float, min_hits: int, local: bool
) -> list[NoisyPixel]:
    """The noisy pixels of one chip's ``[column, row]`` counts."""
    fired = plane[plane > 0]
    if len(fired) == 0:
        return []
    threshold = factor * float(np.median(fired))
    columns, rows = np.nonzero((plane >= min_hits) & (plane > threshold))
    return [
        NoisyPixel(chip, int(c), int(r), int(plane[c, r]), float(plane[c, r]) / float(seconds))
        for c, r in zip(columns, rows)
        if not local or plane[c, r] > factor * _neighbour_median(plane, int(c), int(r))
    ]


def _neighbour_median(plane: np.ndarray, column: int, row: int) -> float:
    """Median hits of the up to 8 pixels around (column, row); 0 for a lone pixel."""
    block = plane[max(column - 1, 0) : column + 2, max(row - 1, 0) : row + 2].astype(float)
    mask = np.ones(block.shape, dtype=bool)
    mask[column - max(column - 1, 0), row - max(row - 1, 0)] = False
    around = block[mask]
    return float(np.median(around)) if len(around) else 0.0
