"""Trivial reconstructions that know nothing of any single image, scored like an attack.

A PSNR means little alone: on smooth images a constant grey already scores 12-15 dB. Each
attacked update is therefore also scored for these guesses, paired by the same best-match
rule, and an attack is shown as leakage only where it beats the best of them. A registry:
a new baseline is one function and one line.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

# fn(originals (N, C, H, W) in [0, 1], data set mean image (C, H, W) or None) -> N guesses,
# or None where the baseline cannot be formed (no data set behind a foreign capture)
Baseline = Callable[[torch.Tensor, Optional[torch.Tensor]], Optional[torch.Tensor]]


def dataset_mean(originals: torch.Tensor,
                 mean_image: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The training set's mean image, once per original: what the data set alone tells."""
    if mean_image is None:
        return None
    return mean_image.to(originals).expand_as(originals).clone()


def batch_colour(originals: torch.Tensor, mean_image: Optional[torch.Tensor]) -> torch.Tensor:
    """One constant image of the batch's mean colour (per channel), once per original:
    the tint of the batch and nothing of any image in it."""
    colour = originals.mean(dim=(0, 2, 3), keepdim=True)
    return colour.expand_as(originals).clone()


BASELINES: dict[str, Baseline] = {
    "dataset_mean": dataset_mean,
    "batch_colour": batch_colour,
}


def baseline_scores(originals: torch.Tensor, mean_image: Optional[torch.Tensor],
                    score: Callable[[torch.Tensor], dict]) -> dict[str, dict]:
    """{baseline: its mean scores}, each guess scored by `score` (the attack's own
    pairing and metrics)."""
    out = {}
    for name, guess in BASELINES.items():
        images = guess(originals, mean_image)
        if images is not None:
            scores = score(images)
            out[name] = {k: v for k, v in scores.items() if isinstance(v, float)}
    return out


def margins(scores: dict, baselines: dict[str, dict], higher_leaks: dict[str, bool]) -> dict:
    """Per metric: the best (most leaking) baseline value and the attack's margin over it,
    positive where the attack leaks more than every baseline."""
    out = {}
    for metric, higher in higher_leaks.items():
        values = [b[metric] for b in baselines.values() if b.get(metric) is not None]
        if scores.get(metric) is None or not values:
            continue
        best = max(values) if higher else min(values)
        out[f"baseline_{metric}"] = best
        out[f"margin_{metric}"] = (scores[metric] - best) if higher else (best - scores[metric])
    return out
