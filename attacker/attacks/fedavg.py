"""Attacks on FedAvg weight updates (several local steps).

`fedavg_replay` replays the client's local SGD on the dummy data, with the declared (or
assumed) learning rate, steps and batch size, and matches the resulting weight change.
`fedavg_naive` is the baseline that treats (old - new) / lr as one gradient of one batch.
Both assume the dummy data is visited in fixed sequential batches of the recorded sizes,
wrapping around at the end of each pass.
"""

from __future__ import annotations

import math

from attacker.attacks.base import Attack
from attacker.adam import invert_adam
from attacker.groups import invert_group
from attacker.local_optimizer import LocalOptimizer


def local_schedule(facts, data_size: int) -> tuple[list[int], float]:
    """(batch size of each local step, lr) of the client's local training: the sizes the
    client recorded when the capture has them (a short last batch of an epoch, a batch
    larger than the partition), else derived from the declared hyper-parameters."""
    for fact in ("lr",) if facts.batch_sizes else ("lr", "batch_size"):
        if getattr(facts, fact) is None:
            raise ValueError(f"the capture does not say the client's {fact}: send it in the "
                             f"train config or declare it (AppFacts.{fact})")
    if facts.batch_sizes:
        return list(facts.batch_sizes), float(facts.lr)
    bs = min(facts.batch_size, data_size)
    steps = facts.local_steps or (facts.local_epochs or 1) * math.ceil(data_size / bs)
    sizes, left = [], data_size
    for _ in range(int(steps)):
        sizes.append(min(bs, left))
        left = left - sizes[-1] or data_size
    return sizes, float(facts.lr)


class FedAvgReplay(Attack):
    name = "fedavg_replay"

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.federation.algorithm != "fedavg":
            raise ValueError(f"attack.name {cls.name!r} attacks FedAvg weight updates: "
                             "federation.algorithm must be 'fedavg'")

    def label_signal(self, obs):
        lr = float(obs.facts.lr)
        return {n: -u / lr for n, u in obs.update.items()}

    def problem(self, obs, knowledge):
        prob = super().problem(obs, knowledge)
        sizes, lr = local_schedule(obs.facts, knowledge.batch_size)
        prob.local_steps, prob.local_batch_sizes, prob.local_lr = len(sizes), sizes, lr
        prob.local_optimizer = LocalOptimizer.from_facts(obs.facts)
        return prob

    def solve(self, problem, seed, progress):
        return invert_adam(problem, self.budget, seed=seed, progress=progress)

    def solve_group(self, problems, seeds):
        return invert_group(problems, self.budget, seeds)


class FedAvgNaive(FedAvgReplay):
    name = "fedavg_naive"

    def problem(self, obs, knowledge):
        prob = Attack.problem(self, obs, knowledge)
        prob.target = self.label_signal(obs)  # (old - new) / lr as one gradient
        return prob
