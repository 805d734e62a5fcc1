"""GradPrune (Zhu et al. 2019; the paper's grid p in {0.5, 0.7, 0.9, 0.95, 0.99, 0.999}).

Per layer, zero the floor(p * n) entries of smallest magnitude and keep the rest. Ties are
broken by position (a stable sort: among equal magnitudes the earlier entry is pruned
first), so exactly floor(p * n) entries are pruned in every tensor. Acts on the FedSGD
gradient or on the FedAvg weight change.
"""

from __future__ import annotations

import torch
from pydantic import Field

from clients.defenses.base import Defense, DefenseParams


def prune_smallest(t: torch.Tensor, fraction: float) -> torch.Tensor:
    flat = t.flatten()
    k = int(fraction * flat.numel())
    if k == 0:
        return t.clone()
    order = torch.argsort(flat.abs(), stable=True)
    out = flat.clone()
    out[order[:k]] = 0
    return out.view_as(t)


class GradPrune(Defense):
    name = "gradprune"
    stage = "update"

    class Params(DefenseParams):
        p: float = Field(default=0.9, ge=0, lt=1, description="fraction pruned per layer")

    def effects(self):
        return {"sparsified": True}

    def transform_update(self, update):
        return {k: prune_smallest(v, self.params.p) if v.is_floating_point() else v
                for k, v in update.items()}
