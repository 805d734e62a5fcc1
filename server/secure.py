"""Rounds under Flower's SecAgg+ (legacy workflow): the server sees only the aggregate.

The legacy FedAvg strategy below receives, after unmasking, the weighted average of the
round's updates in place of every client's parameters; that aggregate is what its capture
records (observer "server", partition "aggregate"). FedSGD applies it as one SGD step.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow

from fedsim.capture import AGGREGATE
from fedsim.experiment import Experiment
from server.evaluation import client_privacy
from server.round_policy import RoundFailed, require_results, sgd_step_arrays
from fedsim.record_keys import (
    DP_EPSILON, NUM_EXAMPLES, PARTITION_ID, SERVER_ROUND, TRAIN_ACCURACY, TRAIN_LOSS)


def _weighted(results, key: str) -> float:
    total = sum(r.num_examples for _, r in results)
    return sum(float(r.metrics.get(key, 0.0)) * r.num_examples for _, r in results) / max(total, 1)


class AggregateCapturingFedAvg(LegacyFedAvg):
    def __init__(self, *, exp: Experiment, capture, recorder, **kwargs):
        super().__init__(**kwargs)
        self.exp, self.capture, self.recorder = exp, capture, recorder
        self.min_results = exp.cfg.federation.min_results
        self.keys = exp.state_keys
        self.param_keys = {n for n, _ in exp.new_model().named_parameters()}
        self._before: list[np.ndarray] = []

    def configure_fit(self, server_round, parameters, client_manager):
        self._before = parameters_to_ndarrays(parameters)
        return super().configure_fit(server_round, parameters, client_manager)

    def _as_state(self, arrays) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.array(a)) for k, a in zip(self.keys, arrays)}

    def aggregate_fit(self, server_round, results, failures):
        causes = [f"{type(f).__name__}: {f}"[:200] for f in failures]
        if len(results) < self.min_results:
            self.recorder.record_train(server_round, None, len(results), causes)
        require_results(server_round, len(results), len(results) + len(failures),
                        self.min_results, causes)
        # identical in every result; SecAgg+ dequantises to float64: back to the model's dtypes
        aggregate = [np.asarray(a, dtype=b.dtype)
                     for a, b in zip(parameters_to_ndarrays(results[0][1].parameters), self._before)]
        kind = str(results[0][1].metrics.get("kind", "weights"))
        metrics = {TRAIN_LOSS: _weighted(results, TRAIN_LOSS),
                   TRAIN_ACCURACY: _weighted(results, TRAIN_ACCURACY)}
        privacy = {int(r.metrics[PARTITION_ID]): client_privacy(r.metrics, r.metrics)
                   for _, r in results if DP_EPSILON in r.metrics}
        self.recorder.record_train(server_round, metrics, len(results), causes, privacy=privacy)
        update = self._as_state(aggregate)
        if kind == "gradient":
            update = {k: v for k, v in update.items() if k in self.param_keys}
        self.capture.record(
            server_round, AGGREGATE, kind, self._as_state(self._before), update,
            secure_aggregation=True,
            partitions=sorted(int(r.metrics[PARTITION_ID]) for _, r in results),
            client_metrics={NUM_EXAMPLES: sum(r.num_examples for _, r in results)})
        if kind == "gradient":
            grads = {k: g for k, g in zip(self.keys, aggregate) if k in self.param_keys}
            new = sgd_step_arrays(dict(zip(self.keys, self._before)), grads,
                                  self.exp.cfg.federation.lr)
            return ndarrays_to_parameters([new[k] for k in self.keys]), metrics
        return ndarrays_to_parameters(aggregate), metrics


def run_secure(grid, context, exp: Experiment, workflow, capture, recorder) -> None:
    cfg = exp.cfg
    fed = cfg.federation
    per_round = fed.clients_per_round or fed.num_clients

    def evaluate_fn(server_round, ndarrays, config):
        out = recorder.evaluate(server_round, strategy._as_state(ndarrays))
        return None if out is None else (out[0], {"accuracy": out[1]})

    strategy = AggregateCapturingFedAvg(
        exp=exp, capture=capture, recorder=recorder,
        fraction_fit=per_round / fed.num_clients, min_fit_clients=per_round,
        min_available_clients=fed.num_clients, fraction_evaluate=0.0, min_evaluate_clients=0,
        evaluate_fn=evaluate_fn, on_fit_config_fn=lambda rnd: {SERVER_ROUND: rnd},
        initial_parameters=ndarrays_to_parameters(
            [v.numpy() for v in exp.new_model().state_dict().values()]),  # in `keys` order
    )
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=fed.num_rounds),
                           strategy=strategy)
    try:
        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
    except RoundFailed as err:
        recorder.fail(str(err))
        raise
