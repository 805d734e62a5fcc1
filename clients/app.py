"""The Flower ClientApp (Message API): train on this node's partition, upload the update.

The reply carries the update, the partition id (node ids are random), the number of
examples and the training loss/accuracy. The private batch never travels: it is a function
of (seed, round, partition) that the evaluator can re-derive. Transport-stage defenses add
Flower client mods (Flower's DP, SecAgg+), so the app is built per experiment; SecAgg+
exists only on Flower's legacy path, so with it the same round runs behind a NumPyClient.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp

from clients.defenses import build_defenses
from clients.local import LocalResult, train_round
from fedsim.config import ExperimentConfig
from fedsim.device import resolve_device
from fedsim.experiment import experiment_for
from fedsim.runtime import config_from_runtime, injected_fault
from fedsim.record_keys import (
    BATCH_SIZES, DISTINCT_EXAMPLES, DP_ACCOUNTING, NUM_EXAMPLES, PARTITION_ID,
    SERVER_ROUND, TRAIN_ACCURACY, TRAIN_LOSS)

STATE_KEY = "fedsim-client-state"


def client_round(cfg: ExperimentConfig, context: Context, global_state: dict[str, torch.Tensor],
                 server_round: int) -> tuple[LocalResult, dict]:
    """One round for this node, with its persistent state; returns the result and metrics."""
    torch.set_num_threads(cfg.threads)
    partition_id = int(context.node_config[PARTITION_ID])
    injected_fault(server_round, partition_id)
    state = dict(context.state[STATE_KEY]) if STATE_KEY in context.state else {}
    result = train_round(experiment_for(cfg), global_state, server_round, partition_id,
                         build_defenses(cfg), resolve_device(cfg.device), state)
    context.state[STATE_KEY] = ConfigRecord(dict(state))
    metrics = {
        PARTITION_ID: partition_id,
        NUM_EXAMPLES: result.num_examples,
        TRAIN_LOSS: float(result.loss),
        TRAIN_ACCURACY: float(result.accuracy),
        **{k: float(v) for k, v in result.extras.items()},
    }
    return result, metrics


def train(msg: Message, context: Context) -> Message:
    cfg = config_from_runtime(context.run_config)
    global_state = msg.content["arrays"].to_torch_state_dict()
    result, metrics = client_round(cfg, context, global_state,
                                   int(msg.content["config"][SERVER_ROUND]))
    content = RecordDict({
        "arrays": ArrayRecord(result.update),
        "metrics": MetricRecord(metrics),
        # facts of the update the server can see anyway: how it was made, step by step
        "update": ConfigRecord({"kind": result.kind, BATCH_SIZES: result.batch_sizes,
                                DISTINCT_EXAMPLES: result.distinct_examples,
                                **{f"effect-{k}": v for k, v in result.effects.items()},
                                **({DP_ACCOUNTING: result.accounting}
                                   if result.accounting else {})}),
    })
    return Message(content=content, reply_to=msg)


class LegacyClient(NumPyClient):
    """The same round for Flower's legacy workflows (SecAgg+): arrays in state-dict order;
    a FedSGD gradient is sent with zeros in place of buffers so every client sends the
    same list of arrays."""

    def __init__(self, context: Context):
        self.context = context

    def fit(self, parameters, config):
        cfg = config_from_runtime(self.context.run_config)
        keys = experiment_for(cfg).state_keys
        state = {k: torch.from_numpy(np.array(a)) for k, a in zip(keys, parameters)}
        result, metrics = client_round(cfg, self.context, state, int(config[SERVER_ROUND]))
        arrays = [result.update[k].numpy() if k in result.update else np.zeros_like(state[k].numpy())
                  for k in keys]
        return arrays, result.num_examples, {
            **metrics, "kind": result.kind,
            **({DP_ACCOUNTING: result.accounting} if result.accounting else {})}


def make_client_app(cfg: Optional[ExperimentConfig], outer_mods: Optional[list] = None) -> ClientApp:
    """The ClientApp with its defenses' mods; `outer_mods` wrap them all (observers that
    must see the reply exactly as it leaves)."""
    defenses = build_defenses(cfg) if cfg is not None else []
    mods = list(outer_mods or []) + [m for d in defenses if d.stage == "transport"
                                     for m in d.client_mods()]
    if any(d.legacy_workflow for d in defenses):
        return ClientApp(client_fn=lambda context: LegacyClient(context).to_client(), mods=mods)
    client_app = ClientApp(mods=mods)
    client_app.train()(train)
    return client_app


class ExperimentClientApp(ClientApp):
    """The ClientApp of whichever experiment each message's run names: under
    `flwr run --run-config experiment=X` the defenses' Flower mods (DP, SecAgg+) and the
    legacy path are those of X, resolved per message (one app per experiment, cached), not
    those of the experiment visible when this module was imported."""

    def __init__(self):
        super().__init__()
        self._apps: dict[str, ClientApp] = {}

    def for_experiment(self, cfg: ExperimentConfig) -> ClientApp:
        key = cfg.model_dump_json()
        if key not in self._apps:
            self._apps[key] = make_client_app(cfg)
        return self._apps[key]

    def __call__(self, message: Message, context: Context) -> Message:
        return self.for_experiment(config_from_runtime(context.run_config))(message, context)


# For `flwr run .`: the experiment comes with each message's run config.
app = ExperimentClientApp()
