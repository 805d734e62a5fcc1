"""Best-match pairing of originals with reconstructions, and the scores of a batch."""

from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np
import torch

from fedsim.metrics.image import METRICS, Metric


def match(originals: torch.Tensor, reconstructions: torch.Tensor, metric: Metric) -> np.ndarray:
    """For each original, the index of its reconstruction.

    Hungarian assignment (one reconstruction per original) when there are at least as many
    reconstructions as originals; otherwise each original takes its best one.
    """
    _refuse_non_finite(originals, "original")
    _refuse_non_finite(reconstructions, "reconstruction")
    cost = np.array([[metric.fn(o, r) for r in reconstructions] for o in originals])
    if not np.isfinite(cost).all():
        i, j = np.argwhere(~np.isfinite(cost))[0]
        raise MatchingError(f"{metric.name} of original {i} and reconstruction {j} is "
                            f"{cost[i, j]}: no pairing can be made")
    if metric.higher_is_better:
        cost = -cost
    if len(reconstructions) >= len(originals):
        from scipy.optimize import linear_sum_assignment  # here: scipy costs 0.5 s to import

        rows, cols = linear_sum_assignment(cost)
        return cols[np.argsort(rows)]
    return cost.argmin(axis=1)


class MatchingError(ValueError):
    """Images that cannot be paired (NaN or inf pixels: an attack that diverged)."""


def _refuse_non_finite(images: torch.Tensor, what: str) -> None:
    bad = (~torch.isfinite(images)).flatten(1).any(dim=1).nonzero().flatten().tolist()
    if bad:
        raise MatchingError(f"{what} {bad[0]} has NaN or inf pixels ({len(bad)} of "
                            f"{len(images)} {what}s do): nothing to score; an attack that "
                            "diverged recovered nothing")


def label_accuracy(true: torch.Tensor, found: torch.Tensor) -> float:
    """Share of the true labels recovered, as multisets (order-free)."""
    t, f = Counter(true.tolist()), Counter(found.tolist())
    return sum(min(c, f[k]) for k, c in t.items()) / max(len(true), 1)


def score_reconstruction(originals: torch.Tensor, reconstructions: torch.Tensor,
                         true_labels: Optional[torch.Tensor] = None,
                         found_labels: Optional[torch.Tensor] = None,
                         match_on: str = "psnr", lpips_fn=None) -> dict:
    """Pair every original with its best reconstruction, then score each pair."""
    pairing = match(originals, reconstructions, METRICS[match_on] if match_on in METRICS
                    else Metric("lpips", lpips_fn, False))
    per_image = []
    for i, j in enumerate(pairing):
        o, r = originals[i], reconstructions[j]
        row = {"original": i, "reconstruction": int(j),
               **{name: m.fn(o, r) for name, m in METRICS.items()}}
        if lpips_fn is not None:
            row["lpips"] = lpips_fn(o, r)
        per_image.append(row)
    keys = [k for k in per_image[0] if k not in ("original", "reconstruction")]
    out = {"pairing": [int(j) for j in pairing], "per_image": per_image,
           **{k: float(np.mean([row[k] for row in per_image])) for k in keys}}
    if true_labels is not None and found_labels is not None:
        out["label_accuracy"] = label_accuracy(true_labels, found_labels)
    return out
