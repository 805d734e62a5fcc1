"""The attack adapted to a declared mix (MixUp, Intra-InstaHide; Huang et al. 2021, §5).

A mixing defense trains on B mixes, each a convex combination of k examples of the
client's data (the example itself with the largest weight) with labels mixed alike. The
update depends on the mixes only, so what one update can reveal is the B mixes; the
attack then pairs the originals with what it recovered. Two models of the batch
(`attack.mixing`):

- `mixes`: the dummies are the B training inputs themselves, with soft labels (the
  granted mixed labels, or soft labels optimised jointly: hard-label restoration assumes
  one-hot labels, which a mix does not have).
- `sources`: the dummies are k x B source images, mixed by the defense's declared mean
  coefficients (`mix_coefficients`, largest first) into the B inputs the model sees, each
  source with its own optimised label, mixed the same way; the originals are paired among
  the k x B sources. The per-example coefficients are random and unknown, and the update
  constrains only the mixes, so this model can only help where the box and the priors
  separate the sources (benchmarks/mixing_adaptation.py measures both).

Intra-InstaHide's random sign flips are undone afterwards by |x| (`Attack.finish`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def mix_coefficients(effects: dict, mode: str) -> Optional[tuple[float, ...]]:
    """The coefficients the `sources` model mixes by, or None (not mixed, or `mixes`)."""
    if mode != "sources" or not effects.get("mixed_labels"):
        return None
    declared = effects.get("mix_coefficients")
    if not declared:
        raise ValueError("attack.mixing = 'sources' needs the defense's declared "
                         "mix_coefficients, and this capture declares none")
    # a capture is untrusted input: 2-64 weights in [0, 1] that sum to one, or one line
    ok = (isinstance(declared, (list, tuple)) and 2 <= len(declared) <= 64
          and all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c <= 1
                  for c in declared)
          and abs(sum(declared) - 1) < 1e-3)
    if not ok:
        raise ValueError(f"capture effects.mix_coefficients {str(declared)[:80]!r} is not a "
                         "list of 2-64 weights in [0, 1] summing to 1")
    return tuple(float(c) for c in declared)


def mixed(sources: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """(k*B, ...) sources, k consecutive ones per mix, to the (B, ...) mixes."""
    k = coefficients.numel()
    grouped = sources.reshape(sources.shape[0] // k, k, *sources.shape[1:])
    return (coefficients.view(1, k, *([1] * (sources.dim() - 1))) * grouped).sum(1)


def input_images(mix: Optional[tuple[float, ...]], x: torch.Tensor) -> torch.Tensor:
    """The images the model sees: the dummies, or under the `sources` model their mixes."""
    if not mix:
        return x
    return mixed(x, torch.tensor(mix, dtype=x.dtype, device=x.device))


def input_labels(mix: Optional[tuple[float, ...]], y_logits, fixed) -> torch.Tensor:
    """The labels of the inputs the model sees: fixed ones, or the optimised ones (softmax
    of the logits; under the `sources` model each source's, mixed like the images)."""
    if fixed is not None:
        return fixed
    y = F.softmax(y_logits, dim=-1)
    return mixed(y, torch.tensor(mix, dtype=y.dtype, device=y.device)) if mix else y
