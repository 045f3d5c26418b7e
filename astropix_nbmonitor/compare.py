"""Hold the current run against a reference run: TOT compatibility and hit-map ratio.

:func:`compatibility` compares two TOT spectra of the same binning and gives
two figures and a verdict (:class:`Compatibility`):

**chi2 / ndf** (two-sample chi-square for unweighted histograms). With
``a_i`` the current counts, ``b_i`` the reference counts, ``n1 = sum a_i``,
``n2 = sum b_i`` and ``s = n1 / n2`` (the reference scaled to the current
number of hits)::

    chi2 = sum_i (a_i - s b_i)**2 / (s (a_i + b_i))
         = sum_i (n2 a_i - n1 b_i)**2 / (n1 n2 (a_i + b_i))

over the bins with entries in either histogram (``a_i + b_i > 0``), with
``ndf = (number of those bins) - 1``. The denominator is the variance of
``a_i - s b_i`` estimated from both histograms under the hypothesis that they
come from one distribution, so the statistical errors of the reference count
as much as those of the current run. (It is the usual form for comparing two
unweighted histograms, e.g. ROOT's ``TH1::Chi2Test`` with option "UU".) The
under- and overflow bins are bins like the others (the TOT tail beyond the
last edge is part of the spectrum).

**Kolmogorov-Smirnov p-value** from the binned cumulative distributions:
``D = max_k |A_k / n1 - B_k / n2|`` with ``A_k``, ``B_k`` the cumulative
sums over the bins in order (underflow first, overflow last), the effective
number of entries ``n = n1 n2 / (n1 + n2)``, ``lambda = sqrt(n) D`` and the
asymptotic Kolmogorov distribution::

    p = Q(lambda) = 2 sum_{j>=1} (-1)**(j-1) exp(-2 j**2 lambda**2)

(for ``lambda < 1.18`` the equivalent series
``1 - sqrt(2 pi) / lambda sum_{j>=1} exp(-(2j-1)**2 pi**2 / (8 lambda**2))``,
which converges faster there). Binning makes the test conservative (ties
within a bin cannot separate), so a small p-value is a real difference.

**Level** (:data:`THRESHOLDS`): ``"red"`` if ``p < 0.001`` or
``chi2/ndf > 3``; ``"amber"`` if ``p < 0.05`` or ``chi2/ndf > 1.5``; else
``"ok"``. ``"none"`` when either histogram is empty or has entries in a
single bin only (nothing to compare).

:func:`hit_map_ratio` gives the current hit map over the reference, each
normalised to its number of hits (1 where the two runs have the same shape),
NaN where the reference has no hit.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import boost_histogram as bh
import numpy as np

__all__ = [
    "LEVELS",
    "THRESHOLDS",
    "Compatibility",
    "compatibility",
    "compatibility_of",
    "hit_map_ratio",
    "kolmogorov_pvalue",
    "scaled_reference",
]

#: The verdicts, from good to bad ("none": nothing to compare).
LEVELS = ("none", "ok", "amber", "red")
#: The thresholds of the verdicts: below ``p`` or above ``chi2_ndf`` gives the level.
THRESHOLDS = {
    "red": {"ks_pvalue": 0.001, "chi2_ndf": 3.0},
    "amber": {"ks_pvalue": 0.05, "chi2_ndf": 1.5},
}
#: Terms of the Kolmogorov series (ample: the terms fall like exp(-2 j^2 lambda^2)).
_KS_TERMS = 100
#: Where the two forms of the Kolmogorov series swap.
_KS_SWITCH = 1.18


@dataclasses.dataclass(frozen=True)
class Compatibility:
    """How compatible a TOT spectrum is with a reference (see the module's text).

    Attributes
    ----------
    chi2 : float
        Two-sample chi-square (NaN if nothing to compare).
    ndf : int
        Bins with entries minus one.
    chi2_ndf : float
        ``chi2 / ndf`` (NaN if ``ndf < 1``).
    ks_pvalue : float
        Kolmogorov-Smirnov p-value (NaN if nothing to compare).
    n_current, n_reference : int
        Entries of the two histograms (flow bins included).
    level : str
        ``"ok"``, ``"amber"``, ``"red"`` or ``"none"``.
    ks_statistic : float
        The largest distance between the two cumulative distributions.
    """

    chi2: float
    ndf: int
    chi2_ndf: float
    ks_pvalue: float
    n_current: int
    n_reference: int
    level: str
    ks_statistic: float = math.nan

    def text(self) -> str:
        """One line: ``chi2/ndf 1.02 (97.9/96), KS p 0.53: ok``."""
        if self.level == "none":
            return f"nothing to compare ({self.n_current:,} hits, reference {self.n_reference:,}): none"
        return (
            f"chi2/ndf {self.chi2_ndf:.2f} ({self.chi2:.1f}/{self.ndf}), "
            f"KS p {self.ks_pvalue:.3g}: {self.level}"
        )

    def as_dict(self) -> dict[str, Any]:
        """The figures as a plain dict (JSON-friendly; NaN stays NaN)."""
        return dataclasses.asdict(self)


def _counts(hist: bh.Histogram) -> np.ndarray:
    """All bin counts of a 1-D histogram, flow bins included, as float64."""
    if hist.ndim != 1:
        msg = f"a TOT spectrum has one axis, got {hist.ndim}"
        raise ValueError(msg)
    return np.asarray(hist.values(flow=True), dtype=np.float64)


def _check_binning(current: bh.Histogram, reference: bh.Histogram) -> None:
    a, b = current.axes[0].edges, reference.axes[0].edges
    if len(a) != len(b) or not np.allclose(a, b):
        msg = f"the two TOT spectra have different binnings: {len(a) - 1} bins {a[0]}..{a[-1]} and {len(b) - 1} bins {b[0]}..{b[-1]}"
        raise ValueError(msg)


def two_sample_chi2(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """``(chi2, ndf)`` of two count arrays (the module's formula)."""
    n1, n2 = a.sum(), b.sum()
    used = (a + b) > 0
    ndf = int(np.count_nonzero(used)) - 1
    if n1 <= 0 or n2 <= 0 or ndf < 1:
        return math.nan, max(ndf, 0)
    au, bu = a[used], b[used]
    chi2 = float(np.sum((n2 * au - n1 * bu) ** 2 / (au + bu)) / (n1 * n2))
    return chi2, ndf


def kolmogorov_pvalue(lam: float) -> float:
    """``Q(lambda)``: the probability that the Kolmogorov statistic exceeds ``lambda``."""
    if not lam > 0:
        return 1.0
    j = np.arange(1, _KS_TERMS + 1, dtype=np.float64)
    if lam < _KS_SWITCH:
        terms = np.exp(-((2 * j - 1) ** 2) * math.pi**2 / (8 * lam**2))
        p = 1.0 - math.sqrt(2 * math.pi) / lam * float(terms.sum())
    else:
        signs = np.where(j % 2 == 1, 1.0, -1.0)
        p = 2.0 * float(np.sum(signs * np.exp(-2 * j**2 * lam**2)))
    return min(1.0, max(0.0, p))


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(D, p-value)`` of two count arrays from their binned cumulative distributions."""
    n1, n2 = a.sum(), b.sum()
    if n1 <= 0 or n2 <= 0:
        return math.nan, math.nan
    distance = float(np.max(np.abs(np.cumsum(a) / n1 - np.cumsum(b) / n2)))
    n_eff = n1 * n2 / (n1 + n2)
    return distance, kolmogorov_pvalue(math.sqrt(n_eff) * distance)


def level_of(chi2_ndf: float, ks_pvalue: float) -> str:
    """The verdict of two figures by :data:`THRESHOLDS` (``"none"`` if both are NaN)."""
    if math.isnan(chi2_ndf) and math.isnan(ks_pvalue):
        return "none"
    for level in ("red", "amber"):
        limits = THRESHOLDS[level]
        if ks_pvalue < limits["ks_pvalue"] or chi2_ndf > limits["chi2_ndf"]:
            return level
    return "ok"


def compatibility(current_tot: bh.Histogram, reference_tot: bh.Histogram) -> Compatibility:
    """Compare a TOT spectrum with a reference of the same binning.

    Raises
    ------
    ValueError
        If the binnings differ or a histogram is not 1-D.
    """
    _check_binning(current_tot, reference_tot)
    a, b = _counts(current_tot), _counts(reference_tot)
    chi2, ndf = two_sample_chi2(a, b)
    chi2_ndf = chi2 / ndf if ndf >= 1 and not math.isnan(chi2) else math.nan
    distance, pvalue = ks_two_sample(a, b)
    if math.isnan(chi2_ndf):
        pvalue = distance = math.nan
    return Compatibility(
        chi2=chi2,
        ndf=ndf,
        chi2_ndf=chi2_ndf,
        ks_pvalue=pvalue,
        n_current=int(a.sum()),
        n_reference=int(b.sum()),
        level=level_of(chi2_ndf, pvalue),
        ks_statistic=distance,
    )


def scaled_reference(current_tot: bh.Histogram, reference_tot: bh.Histogram) -> np.ndarray:
    """The reference's in-range TOT counts scaled to the current number of hits (for an overlay).

    Zeros when the reference is empty.
    """
    _check_binning(current_tot, reference_tot)
    n_ref = float(reference_tot.sum(flow=True))
    values = np.asarray(reference_tot.values(), dtype=np.float64)
    if n_ref <= 0:
        return np.zeros_like(values)
    return values * float(current_tot.sum(flow=True)) / n_ref


def hit_map_ratio(current_map: bh.Histogram, reference_map: bh.Histogram, *, rows_first: bool = False) -> np.ndarray:
    """The current hit map over the reference, each normalised to its hits.

    Parameters
    ----------
    current_map, reference_map : boost_histogram.Histogram
        Hit maps with the same axes (column, row).
    rows_first : bool
        Return ``(rows, columns)`` as the monitor draws (default: the
        histograms' own axis order, ``(columns, rows)``).

    Returns
    -------
    numpy.ndarray
        ``(current / n_current) / (reference / n_reference)``: 1 where the
        pixel has its reference share of hits; NaN where the reference pixel
        is empty, everywhere when either map is empty.
    """
    cur = np.asarray(current_map.values(), dtype=np.float64)
    ref = np.asarray(reference_map.values(), dtype=np.float64)
    if cur.shape != ref.shape:
        msg = f"hit maps of different shapes: {cur.shape} and {ref.shape}"
        raise ValueError(msg)
    n_cur, n_ref = cur.sum(), ref.sum()
    ratio = np.full(cur.shape, np.nan)
    if n_cur > 0 and n_ref > 0:
        filled = ref > 0
        ratio[filled] = (cur[filled] / n_cur) / (ref[filled] / n_ref)
    return ratio.T.copy() if rows_first else ratio


def _histogram_of(source: Any, name: str, chip: int | None) -> bh.Histogram:
    """Histogram ``name`` (``tot_hist`` or ``hit_map``) of all chips, or of one chip_id, of any run.

    ``source``: a state, a saved run, a histogram (returned as it is), or a
    file saved by :mod:`~astropix_nbmonitor.histio`.
    """
    if isinstance(source, (str, Path)):
        from .histio import load

        source = load(source)
    if isinstance(source, bh.Histogram):
        return source
    if chip is None:
        return source.histograms[name]
    per_chip = source.histograms[f"chip_{name}"]
    return per_chip[(bh.loc(int(chip)),) + (slice(None),) * (per_chip.ndim - 1)]


def tot_of(source: Any, chip: int | None = None) -> bh.Histogram:
    """The TOT spectrum (one chip's, or all chips') of a state, a saved run, a histogram or a saved file."""
    return _histogram_of(source, "tot_hist", chip)


def hit_map_of(source: Any, chip: int | None = None) -> bh.Histogram:
    """The hit map (one chip's, or all chips') of a state, a saved run, a histogram or a saved file."""
    return _histogram_of(source, "hit_map", chip)


def compatibility_of(current: Any, reference: Any, *, chip: int | None = None) -> Compatibility:
    """:func:`compatibility` of two runs given as states, saved runs, histograms or saved files.

    Parameters
    ----------
    current, reference : EngineState, SavedRun, boost_histogram.Histogram, str or Path
        Anything with ``tot_hist`` (and ``histograms``), a TOT histogram, or
        a file :func:`~astropix_nbmonitor.histio.save_state` wrote.
    chip : int, optional
        Compare one chip_id's spectra (default all chips).
    """
    return compatibility(tot_of(current, chip), tot_of(reference, chip))
