"""The same federated training, sequential in one process, without Flower or Ray.

A reference for the simulation (tests replay rounds against it; the overhead benchmark
times it) and a quick way to measure a defense's accuracy cost. Aggregation is FedAvg
weighted by examples; FedSGD applies the mean gradient as one server SGD step. Transport
defenses (Flower mods and strategy wrappers) exist only in the Flower run.
"""

from __future__ import annotations

import torch

from clients.defenses import build_defenses
from clients.local import train_round
from fedsim.accuracy import evaluate
from fedsim.capture import Capture
from fedsim.config import ExperimentConfig
from fedsim.experiment import experiment_for
from fedsim.record_keys import NUM_EXAMPLES


def run_in_process(cfg: ExperimentConfig) -> list[dict]:
    exp = experiment_for(cfg)
    fed = cfg.federation
    model = exp.new_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    defenses = [d for d in build_defenses(cfg) if d.stage != "transport"]
    client_state = [dict() for _ in range(fed.num_clients)]
    rows = []
    for rnd in range(1, fed.num_rounds + 1):
        results = [train_round(exp, state, rnd, pid, defenses, torch.device("cpu"),
                               client_state[pid]) for pid in range(fed.num_clients)]
        total = sum(r.num_examples for r in results)
        mean = {k: sum(r.update[k].double() * r.num_examples for r in results) / total
                for k in results[0].update}
        if fed.algorithm == "fedsgd":
            state = {k: (v - fed.lr * mean[k]).to(v.dtype) if k in mean else v
                     for k, v in state.items()}
        else:
            state = {k: mean[k].to(v.dtype) for k, v in state.items()}
        model.load_state_dict(state)
        loss, acc = evaluate(model, exp.dataset.x_test, exp.dataset.y_test)
        extras = {k: max(r.extras.get(k, 0.0) for r in results)
                  for k in results[0].extras}
        rows.append({"round": rnd, "global_accuracy": acc, "global_loss": loss, **extras})
    return rows


def local_capture(cfg: ExperimentConfig, server_round: int = 1, partition_id: int = 0,
                  weights: dict[str, torch.Tensor] | None = None) -> Capture:
    """What the honest-but-curious server would capture of one client round, computed in
    process: the update after the client's own defenses, with the round's declared facts.
    `weights` default to the initial global model."""
    from server.capture import declared_facts

    exp = experiment_for(cfg)
    before = weights if weights is not None else exp.new_model().state_dict()
    defenses = [d for d in build_defenses(cfg) if d.stage != "transport"]
    res = train_round(exp, before, server_round, partition_id, defenses, torch.device("cpu"))
    facts = declared_facts(cfg).with_(
        client_metrics={NUM_EXAMPLES: res.num_examples}, batch_sizes=res.batch_sizes,
        distinct_examples=res.distinct_examples, effects=res.effects)
    return Capture(server_round, partition_id, "server", res.kind, before, res.update, facts)
