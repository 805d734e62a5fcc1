"""Local training steps, free of Flower so that tests and attacks can replay them exactly."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
import torch.nn as nn

from fedsim.accuracy import accuracy


def batch_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], float, float]:
    """FedSGD: the mean-loss gradient of one batch, keyed by parameter name."""
    model.train()
    model.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return grads, loss.item(), accuracy(logits, y)


def local_sgd(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], lr: float,
              optimizer: torch.optim.Optimizer | None = None) -> tuple[float, float, int]:
    """FedAvg: plain SGD over the given batches; returns mean loss, accuracy, examples seen."""
    model.train()
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr)
    total_loss, total_correct, seen = 0.0, 0.0, 0
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        total_loss += loss.item() * len(x)
        total_correct += accuracy(logits, y) * len(x)
        seen += len(x)
    return total_loss / max(seen, 1), total_correct / max(seen, 1), seen
