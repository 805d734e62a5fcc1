"""The server's strategies: FedAvg that also serves FedSGD, and the outermost observer that
keeps what an honest-but-curious server keeps, every individual update as received.

`ObservedStrategy` wraps whatever strategy the run uses (FedAvg alone, or FedAvg inside
Flower's DP wrappers), so the capture sees each reply before any server-side clipping or
aggregation touches it.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Optional

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from fedsim.reply_capture import config_of
from server.evaluation import client_privacy
from server.round_policy import (NodeSnapshot, RoundFailed, connected_node_ids, require_results,
                                 sgd_step)
from fedsim.records import DiskFull
from fedsim.record_keys import DP_EPSILON, PARTITION_ID, TRAIN_ACCURACY

ReplyObserver = Callable[[int, ArrayRecord, Message, dict], None]



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
        grid = NodeSnapshot(grid, connected_node_ids(grid, wanted, self.node_wait_s))
        available = len(grid.get_node_ids())
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

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        causes = failure_causes(replies)
        results = len(replies) - len(causes)
        causes = self._missing + causes
        ok = [m for m in replies if not m.has_error() and "metrics" in m.content]
        weights = [float(m.content["metrics"].get(self.weighted_by_key, 0.0)) for m in ok]
        if results and not sum(weights):
            raise RoundFailed(f"round {server_round}: every client reported "
                              f"{self.weighted_by_key} = 0 (each drew only empty Poisson "
                              "batches): nothing to average; raise federation.batch_size")
        arrays, metrics = (super().aggregate_train(server_round, replies) if results
                           else (None, None))
        if self.on_train_metrics is not None:
            per_client = {int(m.content["metrics"][PARTITION_ID]):
                          float(m.content["metrics"][TRAIN_ACCURACY])
                          for m in ok if TRAIN_ACCURACY in m.content["metrics"]}
            privacy = {int(m.content["metrics"][PARTITION_ID]): client_privacy(
                           m.content["metrics"], m.content.config_records.get("update", {}))
                       for m in ok if DP_EPSILON in m.content["metrics"]}
            self.on_train_metrics(server_round, metrics, results, causes, per_client,
                                  privacy=privacy, weights=weights)
        require_results(server_round, results, len(replies), self.min_results, causes)
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
                except DiskFull:  # fedsim's own capture, out of space: the run stops
                    raise
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
