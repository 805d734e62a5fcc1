"""Analytic label recovery from the last layer's gradient (cross-entropy, mean over batch).

For logits z = W h + b, dL/db_c = mean_i (p_ic - y_ic) and dL/dW_c = mean_i (p_ic - y_ic) h_i.
With non-negative features (ReLU, sigmoid) only the classes present get negative entries.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from attacker.target import last_linear


def _class_signal(update: dict[str, torch.Tensor], model: nn.Module) -> torch.Tensor:
    """Per-class gradient signal: the bias gradient, else the row sums of the weight gradient."""
    name, layer = last_linear(model)
    prefix = f"{name}." if name else ""
    if layer.bias is not None and f"{prefix}bias" in update:
        return update[f"{prefix}bias"].detach().float()
    return update[f"{prefix}weight"].detach().float().sum(dim=1)


def idlg(update, model) -> torch.Tensor:
    """iDLG (Zhao et al. 2020): batch of one, the only negative entry is the label."""
    return _class_signal(update, model).argmin().view(1)


def _row_minima(update, model) -> torch.Tensor:
    """min over features of each class's weight-gradient row: negative only for classes in
    the batch when features are non-negative (an absent class has (p - 0) * h >= 0)."""
    name, _ = last_linear(model)
    prefix = f"{name}." if name else ""
    return update[f"{prefix}weight"].detach().float().min(dim=1).values


def yin(update, model, batch_size: int) -> torch.Tensor:
    """Yin et al. 2021: the batch_size classes with the most negative row minimum of the
    last layer's weight gradient (exact for distinct labels)."""
    signal = _row_minima(update, model)
    if batch_size > len(signal):
        raise ValueError("the sign rule needs distinct labels: batch larger than class count")
    return signal.argsort()[:batch_size].sort().values


@torch.no_grad()
def count_based(update, model, batch_size: int, image_shape, probes: int = 64,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Label counts for batches with repeats: n_c = B * (mean_p_c - dL/db_c).

    mean_p_c, the batch's mean softmax output, is estimated from the model at the round's
    start on random probe inputs; counts are rounded to sum to B (largest remainder).
    """
    signal = _class_signal(update, model)
    device = next(model.parameters()).device
    probe = torch.rand((probes, *image_shape), generator=generator).to(device)
    was_training = model.training
    model.eval()
    mean_p = F.softmax(model(probe), dim=1).mean(0).float()
    model.train(was_training)
    counts = (batch_size * (mean_p - signal)).clamp_min(0).cpu().numpy()
    counts = counts / max(counts.sum(), 1e-12) * batch_size
    base = np.floor(counts).astype(int)
    rest = batch_size - base.sum()
    base[np.argsort(-(counts - base))[:rest]] += 1
    return torch.from_numpy(np.repeat(np.arange(len(base)), base))


def restore_labels(update, model, batch_size: int, image_shape) -> torch.Tensor:
    """The paper's `restored` setting: iDLG for one image, the count rule for a batch.

    The count rule covers distinct labels too and, unlike the sign rule, stays exact when
    the model's predictions are peaked and its features dense (a freshly initialised
    sigmoid LeNet, where the sign rule misses a class the model already favours).
    """
    if batch_size == 1:
        return idlg(update, model)
    return count_based(update, model, batch_size, image_shape)
