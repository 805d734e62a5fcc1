"""The Flower ClientApp (Message API): train on this node's partition, upload the update.

The reply carries the update, the partition id (node ids are random), the number of
examples and the training loss/accuracy. The private batch never travels: it is a function
of (seed, round, partition) that the evaluator can re-derive.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.defenses import build_defenses
from clients.local import train_round
from fedsim.device import resolve_device
from fedsim.experiment import experiment_for
from fedsim.runtime import config_from_runtime


def _client_mods():
    """Transport-stage defenses contribute Flower client mods (Flower DP, SecAgg+)."""
    try:
        cfg = config_from_runtime()
    except Exception:  # no experiment in this process yet: plain app
        return []
    mods = []
    for d in build_defenses(cfg):
        mods.extend(getattr(d, "client_mods", lambda: [])())
    return mods


app = ClientApp(mods=_client_mods())


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = config_from_runtime(context.run_config)
    torch.set_num_threads(cfg.threads)
    exp = experiment_for(cfg)
    partition_id = int(context.node_config["partition-id"])
    server_round = int(msg.content["config"]["server-round"])
    global_state = msg.content["arrays"].to_torch_state_dict()
    result = train_round(exp, global_state, server_round, partition_id,
                         build_defenses(cfg), resolve_device(cfg.device))
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
