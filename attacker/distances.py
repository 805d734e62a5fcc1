"""Gradient-matching distances, each over dicts of per-parameter tensors (a registry).

`cosine` is Geiping et al.'s objective: one cosine similarity between the whole update and
the whole target, the sums running over every parameter tensor. `layer_cosine` sums one
cosine per tensor, which weighs a tiny bias like a large convolution; it was fedsim's
default before the attack-engine benchmark measured it weaker (README, "Attack defaults").
"""

from __future__ import annotations

import torch


def _pairs(grads, target, mask):
    for name, t in target.items():
        g = grads[name]
        if mask is not None and name in mask:
            g, t = g * mask[name], t * mask[name]
        yield g, t


def l2_distance(grads, target, mask=None) -> torch.Tensor:
    """DLG: squared Euclidean distance summed over all parameters."""
    return sum((g - t).pow(2).sum() for g, t in _pairs(grads, target, mask))


def cosine_distance(grads, target, mask=None) -> torch.Tensor:
    """Inverting Gradients: 1 - cosine between the concatenated update and target."""
    dot, g_sq, t_sq = 0.0, 0.0, 0.0
    for g, t in _pairs(grads, target, mask):
        dot = dot + (g * t).sum()
        g_sq = g_sq + g.pow(2).sum()
        t_sq = t_sq + t.pow(2).sum()
    return 1 - dot / ((g_sq * t_sq).sqrt() + 1e-12)


def layer_cosine_distance(grads, target, mask=None) -> torch.Tensor:
    """Sum over parameter tensors of 1 - cosine similarity."""
    total = 0.0
    for g, t in _pairs(grads, target, mask):
        g, t = g.flatten(), t.flatten()
        total = total + 1 - (g @ t) / (g.norm() * t.norm() + 1e-12)
    return total


DISTANCES = {"cosine": cosine_distance, "layer_cosine": layer_cosine_distance, "l2": l2_distance}
