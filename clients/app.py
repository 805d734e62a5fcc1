"""The Flower ClientApp (Message API): train on this node's partition, upload the update.

The reply carries the update, the partition id (node ids are random), the number of
examples and the training loss/accuracy. The private batch never travels: it is a function
of (seed, round, partition) that the evaluator can re-derive. Transport-stage defenses add
Flower client mods (Flower's DP), so the app is built per experiment.
"""

from __future__ import annotations

from typing import Optional

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.defenses import build_defenses
from clients.local import train_round
from fedsim.config import ExperimentConfig
from fedsim.device import resolve_device
from fedsim.experiment import experiment_for
from fedsim.runtime import config_from_runtime

STATE_KEY = "fedsim-client-state"


def train(msg: Message, context: Context) -> Message:
    cfg = config_from_runtime(context.run_config)
    torch.set_num_threads(cfg.threads)
    exp = experiment_for(cfg)
    partition_id = int(context.node_config["partition-id"])
    server_round = int(msg.content["config"]["server-round"])
    global_state = msg.content["arrays"].to_torch_state_dict()
    state = dict(context.state[STATE_KEY]) if STATE_KEY in context.state else {}
    result = train_round(exp, global_state, server_round, partition_id,
                         build_defenses(cfg), resolve_device(cfg.device), state)
    context.state[STATE_KEY] = ConfigRecord({k: v for k, v in state.items()})
    metrics = {
        "partition-id": partition_id,
        "num-examples": result.num_examples,
        "train-loss": float(result.loss),
        "train-accuracy": float(result.accuracy),
        **{k: float(v) for k, v in result.extras.items()},
    }
    content = RecordDict({
        "arrays": ArrayRecord(result.update),
        "metrics": MetricRecord(metrics),
        "update": ConfigRecord({"kind": result.kind}),
    })
    return Message(content=content, reply_to=msg)


def make_client_app(cfg: Optional[ExperimentConfig]) -> ClientApp:
    mods = []
    for d in build_defenses(cfg) if cfg is not None else []:
        if d.stage == "transport":
            mods.extend(d.client_mods())
    client_app = ClientApp(mods=mods)
    client_app.train()(train)
    return client_app


def _config_or_none() -> Optional[ExperimentConfig]:
    try:
        return config_from_runtime()
    except Exception:  # noqa: BLE001 - no experiment reachable at import: a plain app
        return None


# For `flwr run .`: built from the experiment visible when the module is imported.
app = make_client_app(_config_or_none())
