"""Shared mixing step of MixUp and Intra-InstaHide (Huang et al. 2020, the paper's k = 4).

Each training example becomes a convex mix of itself and k - 1 other examples of the
client's own data; coefficients come from a symmetric Dirichlet, are redrawn until the
largest is at most `cap`, and the largest goes to the example itself. Labels are mixed with
the same coefficients and trained with soft-label cross-entropy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from clients.defenses.base import DefenseParams


class MixParams(DefenseParams):
    k: int = Field(default=4, ge=2, le=64, description="examples per mix")
    cap: float = Field(default=0.65, gt=0, le=1, description="largest coefficient allowed")
    alpha: float = Field(default=1.0, gt=0, description="Dirichlet concentration")

    @model_validator(mode="after")
    def _cap_reachable(self):
        if self.cap * self.k < 1:
            raise ValueError(f"cap={self.cap} with k={self.k} cannot sum to one (need cap >= 1/k)")
        return self


@dataclass
class Mix:
    x: torch.Tensor          # (B, C, H, W) mixed images
    y: torch.Tensor          # (B, num_classes) mixed soft labels
    coeffs: torch.Tensor     # (B, k), first column is the example's own weight
    sources: torch.Tensor    # (B, k) pool indices, first column is the example itself


def draw_coefficients(n: int, params: MixParams, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, params.k))
    for i in range(n):
        while True:
            c = rng.dirichlet(np.full(params.k, params.alpha))
            if c.max() <= params.cap:
                break
        out[i] = np.sort(c)[::-1]
    return out


def expected_coefficients(params: MixParams, draws: int = 4096) -> list[float]:
    """The mean of the sorted mixing coefficients (largest, the example's own, first), by
    Monte Carlo from a fixed seed: a public function of the declared parameters, which the
    defense declares so that an attacker can model the mix (`attacker.mixing`)."""
    return list(_expected(params.k, params.cap, params.alpha, draws))


@functools.cache
def _expected(k: int, cap: float, alpha: float, draws: int) -> tuple[float, ...]:
    params = MixParams(k=k, cap=cap, alpha=alpha)
    return tuple(float(c) for c in
                 draw_coefficients(draws, params, np.random.default_rng(0)).mean(0))


def declared_mixing(params: MixParams) -> dict:
    """What MixUp and Intra-InstaHide declare about the upload: soft labels, and the mix."""
    return {"mixed_labels": True, "mix_k": params.k,
            "mix_coefficients": expected_coefficients(params)}


def mix(x: torch.Tensor, y: torch.Tensor, pool_x: torch.Tensor, pool_y: torch.Tensor,
        pool_index: np.ndarray, num_classes: int, params: MixParams,
        rng: np.random.Generator) -> Mix:
    """Mix every batch example (at `pool_index` in the pool) with k - 1 other pool examples."""
    n, pool_n = len(x), len(pool_x)
    coeffs = torch.from_numpy(draw_coefficients(n, params, rng)).float()
    sources = np.empty((n, params.k), dtype=np.int64)
    for i in range(n):
        others = rng.choice(np.delete(np.arange(pool_n), pool_index[i]),
                            size=params.k - 1, replace=pool_n - 1 < params.k - 1)
        sources[i] = np.concatenate([[pool_index[i]], others])
    src = torch.from_numpy(sources)
    xs = pool_x[src]                                    # (B, k, C, H, W)
    xs[:, 0] = x
    ys = F.one_hot(pool_y[src], num_classes).float()    # (B, k, num_classes)
    ys[:, 0] = F.one_hot(y, num_classes).float()
    w = coeffs.view(n, params.k, *([1] * (xs.dim() - 2)))
    return Mix((w * xs).sum(1), (coeffs.unsqueeze(-1) * ys).sum(1), coeffs, src)
