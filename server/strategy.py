"""FedAvg that keeps what an honest-but-curious server keeps: every individual update.

It aggregates exactly as Flower's FedAvg does (weighted by examples). For FedSGD the
clients upload gradients, so the averaged gradient is applied as one server SGD step.
Each client's reply is handed to an observer callback *before* aggregation.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

ReplyObserver = Callable[[int, ArrayRecord, Message], None]


class CapturingFedAvg(FedAvg):
    def __init__(self, *, algorithm: str, server_lr: float,
                 on_reply: Optional[ReplyObserver] = None,
                 on_train_metrics: Optional[Callable[[int, MetricRecord, int], None]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.algorithm = algorithm
        self.server_lr = server_lr
        self.on_reply = on_reply
        self.on_train_metrics = on_train_metrics
        self._weights_before: dict[int, ArrayRecord] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._weights_before = {server_round: arrays}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        before = self._weights_before[server_round]
        if self.on_reply is not None:
            for msg in replies:
                if not msg.has_error():
                    self.on_reply(server_round, before, msg)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if self.on_train_metrics is not None and metrics is not None:
            self.on_train_metrics(server_round, metrics, sum(not m.has_error() for m in replies))
        if arrays is not None and self.algorithm == "fedsgd":
            arrays = sgd_step(before, arrays, self.server_lr)
        return arrays, metrics


def sgd_step(weights: ArrayRecord, mean_grad: ArrayRecord, lr: float) -> ArrayRecord:
    """w - lr * g for every entry that has a gradient; buffers pass through unchanged."""
    out = {}
    for key, arr in weights.items():
        w = arr.numpy()
        if key in mean_grad:
            w = (w - lr * mean_grad[key].numpy()).astype(w.dtype)
        out[key] = Array(np.ascontiguousarray(w))
    return ArrayRecord(out)
