"""One client's round, end to end and free of Flower: batches -> defenses -> training -> update.

The ClientApp wraps this; tests and the evaluator call it directly to replay a round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from clients.defenses import Defense
from clients.training import batch_gradient, local_sgd
from fedsim.data.batches import defense_rng
from fedsim.experiment import Experiment


@dataclass
class LocalResult:
    update: dict[str, torch.Tensor]   # what leaves the client
    kind: str                         # "gradient" (FedSGD) or "weights" (FedAvg)
    num_examples: int
    loss: float
    accuracy: float
    extras: dict[str, float] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)  # of each local step, as trained
    distinct_examples: int = 0                            # different examples among them
    effects: dict = field(default_factory=dict)           # what the defenses declared
    accounting: str | None = None                         # what extras' dp-epsilon bounds


def declared_effects(defenses: list[Defense]) -> dict:
    """The defenses' declared effects on the upload, merged in order; the default pixel box
    is [0, 1]."""
    out: dict = {"pixel_box": [0.0, 1.0]}
    for d in defenses:
        out.update(d.effects())
    return out


def training_batches(exp: Experiment, server_round: int, partition_id: int,
                     defenses: list[Defense], device: torch.device):
    """The client's private batches of this round, after its data-stage defenses."""
    ds = exp.dataset
    rng = defense_rng(exp.cfg.seed, server_round, partition_id)
    partition = exp.partitions[partition_id]
    data_stage = [d for d in defenses if d.stage == "data"]
    # the client's own data, which mixing defenses draw partners from (copied only for them)
    pool = (ds.x_train[partition], ds.y_train[partition]) if data_stage else None
    out = []
    for idx in exp.client_batches(server_round, partition_id):
        x, y = ds.x_train[idx], ds.y_train[idx]
        for d in data_stage:
            x, y = d.transform_batch(x, y, ds.num_classes, rng,
                                     (*pool, np.searchsorted(partition, idx)))
        out.append((x.to(device), y.to(device)))
    return out


def train_round(exp: Experiment, global_state: dict[str, torch.Tensor], server_round: int,
                partition_id: int, defenses: list[Defense], device: torch.device,
                state: dict | None = None) -> LocalResult:
    """`state` is the client's persistent state across rounds (e.g. DP steps taken)."""
    state = state if state is not None else {}
    state["partition_size"] = len(exp.partitions[partition_id])
    model = exp.new_model()
    model.load_state_dict(global_state)
    model.to(device)
    batches = training_batches(exp, server_round, partition_id, defenses, device)
    fed = exp.cfg.federation
    extras: dict[str, float] = {}
    trainer = next((d for d in defenses if d.stage == "training"), None)
    if trainer is not None:
        update, loss, acc, seen, extras = trainer.train(model, batches, fed, state)
        kind = "gradient" if fed.algorithm == "fedsgd" else "weights"
    elif fed.algorithm == "fedsgd":
        (x, y), = batches
        update, loss, acc = batch_gradient(model, x, y)
        seen, kind = len(x), "gradient"
    else:
        loss, acc, seen = local_sgd(model, batches, fed.lr)
        update, kind = {k: v.detach().clone() for k, v in model.state_dict().items()}, "weights"
    update = _apply_update_defenses(update, kind, global_state, defenses)
    update = {k: v.detach().cpu() for k, v in update.items()}
    for d in defenses:  # the privacy spent so far, by the defense that accounts for it
        extras.update(d.account(state, fed))
    indices = exp.client_batches(server_round, partition_id)
    return LocalResult(update, kind, seen, loss, acc, extras,
                       batch_sizes=[len(x) for x, _ in batches],
                       distinct_examples=len(np.unique(np.concatenate(indices))),
                       effects=declared_effects(defenses),
                       accounting=next((d.accounting for d in defenses if d.accounting), None))


def _apply_update_defenses(update, kind, global_state, defenses):
    """Update-stage defenses see a gradient-like change: the gradient, or new - old weights."""
    stage = [d for d in defenses if d.stage == "update"]
    if not stage:
        return update
    if kind == "gradient":
        for d in stage:
            update = d.transform_update(update)
        return update
    floats = {k for k, v in update.items() if v.is_floating_point()}
    delta = {k: update[k] - global_state[k].to(update[k].device) for k in floats}
    for d in stage:
        delta = d.transform_update(delta)
    return {k: (global_state[k].to(v.device) + delta[k]) if k in floats else v
            for k, v in update.items()}
