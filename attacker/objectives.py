"""Gradient-matching distances, each over a dict of per-parameter tensors."""

from __future__ import annotations

import torch


def _pairs(grads, target, mask):
    for name, t in target.items():
        g = grads[name]
        if mask is not None and name in mask:
            g, t = g * mask[name], t * mask[name]
        yield g, t


def l2_distance(grads, target, mask=None) -> torch.Tensor:
    """DLG: squared Euclidean distance summed over layers."""
    return sum((g - t).pow(2).sum() for g, t in _pairs(grads, target, mask))


def cosine_distance(grads, target, mask=None) -> torch.Tensor:
    """Inverting Gradients: sum over layers of 1 - cosine similarity."""
    total = 0.0
    for g, t in _pairs(grads, target, mask):
        g, t = g.flatten(), t.flatten()
        total = total + 1 - (g @ t) / (g.norm() * t.norm() + 1e-12)
    return total


DISTANCES = {"l2": l2_distance, "cosine": cosine_distance}
