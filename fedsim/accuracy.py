"""Accuracy of a classifier, shared by the clients (training metrics) and the server (the
global model's test accuracy), so neither imports the other. The loss is plain
`F.cross_entropy`, which takes hard labels and soft labels (rows of probabilities) alike."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    hard = targets if targets.dim() == 1 else targets.argmax(dim=1)
    return (logits.argmax(dim=1) == hard).float().mean().item()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """Mean loss and accuracy of the model in eval mode on a held-out set."""
    model.eval()
    loss, correct = 0.0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size])
        loss += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
    return loss / len(x), correct / len(x)
