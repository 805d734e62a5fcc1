"""Figures a reader can trust: a mean with its n, a 95% bootstrap interval and its worst
case; a paired difference that says when it is within noise.

The unit of every leakage statistic is the attacked update (one client's upload in one
round, as one observer saw it): its per-image scores are averaged first, so a batch of 32
counts once, not 32 times. Intervals are `scipy.stats.bootstrap` (BCa, 9,999 resamples,
seeded, so a table rebuilt from the same rows prints the same interval).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Hashable, Iterable, Mapping, Optional, Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 9_999
SEED = 0
MIN_N = 5  # fewer values get no interval: a bootstrap of 2-4 values covers far below 95%


@dataclass(frozen=True)
class Summary:
    """mean, its interval (None below two values), n, and the worst case."""

    mean: Optional[float]
    low: Optional[float]
    high: Optional[float]
    n: int
    worst: Optional[float] = None

    def as_row(self, prefix: str) -> dict:
        return {f"{prefix}_{k}": v for k, v in asdict(self).items()}

    @classmethod
    def from_row(cls, row: Mapping, prefix: str) -> "Summary":
        """The summary `as_row` wrote (a table row read back; n = 0 when absent)."""
        def num(key):
            value = row.get(f"{prefix}_{key}")
            return None if value in (None, "") else float(value)

        return cls(num("mean"), num("low"), num("high"), int(num("n") or 0), num("worst"))

    def text(self, digits: int = 2, signed: bool = False) -> str:
        """'14.2 [13.1, 15.4] (n=16)' ('+1.2 [...]' when `signed`), or '-' when nothing was
        measured."""
        if self.mean is None:
            return "-"
        f = f"{'+' if signed else ''}.{digits}f"
        interval = f" [{self.low:{f}}, {self.high:{f}}]" if self.low is not None else ""
        return f"{self.mean:{f}}{interval} (n={self.n})"


def _interval(samples: Sequence[Sequence[float]], statistic: Callable, paired: bool = False
              ) -> tuple[Optional[float], Optional[float]]:
    from scipy.stats import bootstrap

    data = [np.asarray(s, dtype=float) for s in samples]
    if min(len(d) for d in data) < MIN_N:
        return None, None
    if all(np.ptp(d) == 0 for d in data):  # no spread: the interval is the value itself
        value = float(statistic(*data))
        return value, value
    with warnings.catch_warnings():  # BCa on tiny or tied samples warns, then degrades
        warnings.simplefilter("ignore")
        res = bootstrap(data, statistic, confidence_level=CONFIDENCE, n_resamples=RESAMPLES,
                        method="BCa", paired=paired, vectorized=True,
                        rng=np.random.default_rng(SEED))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa undefined: percentile
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = bootstrap(data, statistic, confidence_level=CONFIDENCE,
                            n_resamples=RESAMPLES, method="percentile", paired=paired,
                            vectorized=True, rng=np.random.default_rng(SEED))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return low, high


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def summarize(values: Iterable[Optional[float]], higher_leaks: bool = True) -> Summary:
    """Mean, 95% bootstrap interval, n and worst case (the most leaking value) of one
    value per attacked update; None values (a metric not computed) are left out."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return Summary(None, None, None, 0)
    low, high = _interval([vals], _mean)
    return Summary(float(np.mean(vals)), low, high, len(vals),
                   max(vals) if higher_leaks else min(vals))


@dataclass(frozen=True)
class Comparison:
    """A cell against its baseline cell: the difference of means (cell minus baseline),
    its interval, the number of pairs, and whether the interval contains 0."""

    difference: Optional[float]
    low: Optional[float]
    high: Optional[float]
    n: int
    paired: bool

    def as_row(self, figure: str) -> dict:
        return {f"{figure}_diff": self.difference, f"{figure}_diff_low": self.low,
                f"{figure}_diff_high": self.high, f"{figure}_diff_n": self.n,
                f"{figure}_diff_paired": self.paired, f"{figure}_verdict": self.verdict()}

    @classmethod
    def from_row(cls, row: Mapping, figure: str) -> "Comparison":
        def num(key):
            value = row.get(f"{figure}_{key}")
            return None if value in (None, "") else float(value)

        return cls(num("diff"), num("diff_low"), num("diff_high"), int(num("diff_n") or 0),
                   row.get(f"{figure}_diff_paired") in (True, "True"))

    @property
    def within_noise(self) -> Optional[bool]:
        if self.low is None:
            return None
        return self.low <= 0 <= self.high

    def verdict(self) -> str:
        if self.difference is None:
            return "no data"
        if self.within_noise is None:
            return "n too small"
        return "within noise" if self.within_noise else (
            "higher" if self.difference > 0 else "lower")

    def text(self, digits: int = 2) -> str:
        if self.difference is None:
            return "-"
        interval = (f" [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"
                    if self.low is not None else "")
        kind = "pairs" if self.paired else "unpaired"
        return f"{self.difference:+.{digits}f}{interval} ({kind}, n={self.n}): {self.verdict()}"


def _mean_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def compare(cell: Mapping[Hashable, float], baseline: Mapping[Hashable, float]) -> Comparison:
    """The cell minus its baseline. Updates present in both (same seed, round, client and
    observer: the same private batch) are compared pair by pair, which removes the spread
    between batches; without any common update the two means are compared unpaired."""
    cell = {k: float(v) for k, v in cell.items() if v is not None}
    baseline = {k: float(v) for k, v in baseline.items() if v is not None}
    common = sorted(set(cell) & set(baseline), key=repr)
    if common:
        diffs = [cell[k] - baseline[k] for k in common]
        low, high = _interval([diffs], _mean)
        return Comparison(float(np.mean(diffs)), low, high, len(diffs), paired=True)
    if not cell or not baseline:
        return Comparison(None, None, None, 0, paired=False)
    a, b = list(cell.values()), list(baseline.values())
    low, high = _interval([a, b], _mean_difference)
    return Comparison(float(np.mean(a) - np.mean(b)), low, high, min(len(a), len(b)),
                      paired=False)


def updates_needed(sd_of_difference: float, resolve: float = 1.0) -> int:
    """Attacked updates per cell for a 95% interval of half-width `resolve` around a
    paired difference whose spread is `sd_of_difference` (normal approximation)."""
    return max(2, math.ceil((1.96 * sd_of_difference / resolve) ** 2))
