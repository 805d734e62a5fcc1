"""Image priors and the BatchNorm statistics prior: small differentiable terms, a registry.

Each regulariser maps a `PriorContext` (the dummy images and what the first forward saw)
to a scalar, or to None when the problem gives it nothing to work with; the objective adds
it times its weight from the budget (`Budget.prior_weights`). A new prior is one function
here, one registry line and one budget weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn


@dataclass
class PriorContext:
    x: torch.Tensor                                        # dummy images, normalised coordinates
    bn_features: list[torch.Tensor] = field(default_factory=list)  # inputs of each BatchNorm
    bn_targets: Optional[list] = None                      # (mean, var) per BatchNorm, or None


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic TV), as in Geiping et al."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def bn_inputs_stats(features: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batch mean and (biased) variance per channel of each BatchNorm layer's input."""
    return [(f.mean(dim=(0, 2, 3)), f.var(dim=(0, 2, 3), unbiased=False)) for f in features]


def bn_prior(features: list[torch.Tensor], targets) -> torch.Tensor:
    """sum_l ||mu_l(x) - mu_l||^2 + ||var_l(x) - var_l||^2 (GradInversion, Yin et al. 2021)."""
    total = features[0].new_zeros(())
    for (mu, var), (t_mu, t_var) in zip(bn_inputs_stats(features), targets):
        total = total + (mu - t_mu).pow(2).sum() + (var - t_var).pow(2).sum()
    return total


def _tv_term(ctx: PriorContext) -> torch.Tensor:
    return total_variation(ctx.x)


def _bn_term(ctx: PriorContext) -> Optional[torch.Tensor]:
    if ctx.bn_targets is None or not ctx.bn_features:
        return None
    return bn_prior(ctx.bn_features, ctx.bn_targets)


REGULARISERS: dict[str, Callable[[PriorContext], Optional[torch.Tensor]]] = {
    "tv": _tv_term,
    "bn": _bn_term,
}


class BNRecorder:
    """Forward hooks that keep each BatchNorm layer's input of the current forward."""

    def __init__(self, model: nn.Module):
        self.features: list[torch.Tensor] = []
        self.handles = [
            m.register_forward_hook(lambda mod, inp, out: self.features.append(inp[0]))
            for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]

    def pop(self) -> list[torch.Tensor]:
        out, self.features = self.features, []
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def inferred_bn_targets(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The `inferred` setting: the model's own running statistics stand in for the batch's."""
    return [(m.running_mean.detach().clone(), m.running_var.detach().clone())
            for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def batch_bn_stats(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The exact BatchNorm prior: each layer's input statistics on the batch `x` the client
    fed the model (batch statistics, as in training), for whoever knows `x` — the
    evaluator's oracle or your own originals."""
    from attacker.target import functional_copy

    clone = functional_copy(model)
    rec = BNRecorder(clone)
    try:
        clone(x.to(next(model.parameters()).device))
        return bn_inputs_stats(rec.pop())
    finally:
        rec.close()
