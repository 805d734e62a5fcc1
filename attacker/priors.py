"""Image priors and the BatchNorm statistics prior, as small differentiable terms."""

from __future__ import annotations

import torch
import torch.nn as nn


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
