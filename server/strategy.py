"""The server's strategies: FedAvg that also serves FedSGD, and the outermost observer that
keeps what an honest-but-curious server keeps, every individual update as received.

`ObservedStrategy` wraps whatever strategy the run uses (FedAvg alone, or FedAvg inside
Flower's DP wrappers), so the capture sees each reply before any server-side clipping or
aggregation touches it.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Optional

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from fedsim.reply_capture import config_of

ReplyObserver = Callable[[int, ArrayRecord, Message, dict], None]



class RoundFailed(RuntimeError):
    """A round ended with fewer successful client results than `min_results`."""


def failure_causes(replies: list[Message]) -> list[str]:
    """One short line per failed reply: Flower's error code and reason."""
    return [f"node {m.metadata.src_node_id}: error {m.error.code}: "
            f"{(m.error.reason or '').strip().splitlines()[-1][:200] if m.error.reason else '?'}"
            for m in replies if m.has_error()]


class FedSgdAwareFedAvg(FedAvg):
    """Aggregates exactly as Flower's FedAvg (weighted by examples). For FedSGD the clients
    upload gradients, so the averaged gradient is applied as one server SGD step.

    Client failures are counted every round and handed to `on_train_metrics` with their
    causes; a round with fewer than `min_results` results raises `RoundFailed`, which ends
    the run (Flower's FedAvg would go on with whatever arrived, or with nothing)."""

    def __init__(self, *, algorithm: str, server_lr: float, min_results: int = 1,
                 on_train_metrics: Optional[Callable[..., None]] = None,
                 node_wait_s: float = 120.0, **kwargs):
        super().__init__(**kwargs)
        self.algorithm = algorithm
        self.server_lr = server_lr
        self.min_results = min_results
        self.on_train_metrics = on_train_metrics
        self.node_wait_s = node_wait_s
        self._weights_before: dict[int, ArrayRecord] = {}
        self._missing: list[str] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._weights_before = {server_round: arrays}
        wanted = self.min_train_nodes
        available = self._wait_for_nodes(grid, wanted)
        self._missing = [f"{wanted - available} of {wanted} nodes not connected at the start "
                         f"of round {server_round} (waited {self.node_wait_s:g} s)"
                         ] if available < wanted else []
        if available < wanted:  # a SuperNode left: go on with those left, as min_results allows
            if available < self.min_results:
                raise RoundFailed(f"round {server_round}: {available} nodes connected, fewer "
                                  f"than federation.min_results = {self.min_results}")
            saved = self.min_train_nodes, self.min_available_nodes, self.fraction_train
            self.min_train_nodes = self.min_available_nodes = available
            self.fraction_train = 1.0
            try:
                return super().configure_train(server_round, arrays, config, grid)
            finally:
                self.min_train_nodes, self.min_available_nodes, self.fraction_train = saved
        return super().configure_train(server_round, arrays, config, grid)

    def _wait_for_nodes(self, grid: Grid, wanted: int) -> int:
        """Connected nodes, after waiting at most node_wait_s for `wanted` of them (Flower's
        sampling would wait forever for a node that is gone)."""
        import time

        deadline = time.monotonic() + self.node_wait_s
        while (count := len(list(grid.get_node_ids()))) < wanted and time.monotonic() < deadline:
            time.sleep(0.5)
        return count

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        causes = failure_causes(replies)
        results = len(replies) - len(causes)
        causes = self._missing + causes
        arrays, metrics = (super().aggregate_train(server_round, replies) if results
                           else (None, None))
        if self.on_train_metrics is not None:
            per_client = {int(m.content["metrics"]["partition-id"]):
                          float(m.content["metrics"]["train-accuracy"])
                          for m in replies if not m.has_error() and "metrics" in m.content
                          and "train-accuracy" in m.content["metrics"]}
            self.on_train_metrics(server_round, metrics, results, causes, per_client)
        if results < self.min_results:
            raise RoundFailed(
                f"round {server_round}: {results} of {len(replies)} clients returned a result "
                f"(federation.min_results = {self.min_results}); "
                + ("; ".join(causes) if causes else "no client replied"))
        if arrays is not None and self.algorithm == "fedsgd":
            arrays = sgd_step(self._weights_before[server_round], arrays, self.server_lr)
        return arrays, metrics


class ObservedStrategy(Strategy):
    """Delegates everything to `inner`; hands each successful training reply, with the
    weights sent out that round and the train config sent to that node, to `on_reply`
    before `inner` sees it. Aggregation is `inner`'s, untouched."""

    def __init__(self, inner: Strategy, on_reply: ReplyObserver):
        super().__init__()
        self.inner, self.on_reply = inner, on_reply
        self._sent: dict[int, ArrayRecord] = {}
        self._configs: dict[int, dict] = {}

    def __getattr__(self, name):  # the inner strategy's own settings (fraction_train, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._sent = {server_round: arrays}
        self._configs = {int(m.metadata.dst_node_id): config_of(m) for m in messages}
        return messages

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        for msg in replies:
            if not msg.has_error():
                try:
                    self.on_reply(server_round, self._sent[server_round], msg,
                                  self._configs.get(int(msg.metadata.src_node_id), {}))
                except Exception as err:  # noqa: BLE001 - observing never stops training
                    logging.getLogger("fedsim").error(
                        "round %d: the capture of node %s failed: %r", server_round,
                        msg.metadata.src_node_id, err)
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()


def sgd_step_arrays(weights: dict[str, np.ndarray], mean_grad: dict[str, np.ndarray],
                    lr: float) -> dict[str, np.ndarray]:
    """w - lr * g for every entry that has a gradient (in w's dtype); buffers pass through."""
    return {k: (w - lr * mean_grad[k]).astype(w.dtype) if k in mean_grad else w
            for k, w in weights.items()}


def sgd_step(weights: ArrayRecord, mean_grad: ArrayRecord, lr: float) -> ArrayRecord:
    """`sgd_step_arrays` on Flower ArrayRecords."""
    new = sgd_step_arrays({k: a.numpy() for k, a in weights.items()},
                          {k: a.numpy() for k, a in mean_grad.items()}, lr)
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in new.items()})
