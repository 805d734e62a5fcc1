"""The client's optimiser, functionally, so the FedAvg replay can differentiate through it.

Mirrors `torch.optim.SGD` step for step (weight decay added to the gradient, momentum
buffer started at the first gradient, dampening, Nesterov), so an app that trains with
momentum or weight decay is replayed exactly (`tests/test_local_optimizer.py` checks it
against torch.optim.SGD). The momentum buffer starts empty every round, as in an app that
builds its optimiser inside the round's train function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LocalOptimizer:
    momentum: float = 0.0
    weight_decay: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False

    @classmethod
    def from_facts(cls, facts) -> "LocalOptimizer":
        """From a capture's declared facts (`optimizer`); plain SGD when none is declared."""
        declared = facts.optimizer
        return cls(**{k: declared[k] for k in ("momentum", "weight_decay", "dampening",
                                                "nesterov") if k in declared})

    @property
    def plain(self) -> bool:
        return self.momentum == 0 and self.weight_decay == 0

    def step(self, params: Params, grads: Params, lr: float,
             buf: Optional[Params]) -> tuple[Params, Optional[Params]]:
        """(new params, new momentum buffer) after one SGD step."""
        if self.plain:
            return {n: params[n] - lr * grads[n] for n in params}, None
        d = {n: grads[n] + self.weight_decay * params[n] if self.weight_decay else grads[n]
             for n in params}
        if self.momentum:
            buf = dict(d) if buf is None else {
                n: self.momentum * buf[n] + (1 - self.dampening) * d[n] for n in params}
            d = ({n: d[n] + self.momentum * buf[n] for n in params} if self.nesterov
                 else buf)
        return {n: params[n] - lr * d[n] for n in params}, buf
