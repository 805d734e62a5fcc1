"""The private-batch oracle: which examples a client trained on in a round.

Batches are a pure function of (seed, round, partition, local step), so they never need to
travel in a message: the client derives them to train and the evaluator derives them again
to score a reconstruction. The attacker never imports this module.
"""

from __future__ import annotations

import math

import numpy as np


def _rng(seed: int, server_round: int, partition_id: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, server_round, partition_id, stream])


def local_batches(partition: np.ndarray, *, seed: int, server_round: int, partition_id: int,
                  algorithm: str, batch_size: int, local_epochs: int = 1,
                  local_steps: int | None = None) -> list[np.ndarray]:
    """Train-set indices of each local step.

    FedSGD: one batch of ``batch_size`` drawn without replacement (the whole partition if
    smaller). FedAvg: ``local_steps`` batches, or ``local_epochs`` passes over a fresh
    shuffle of the partition each epoch, the last batch of a pass possibly smaller.
    """
    rng = _rng(seed, server_round, partition_id, 0)
    n = len(partition)
    if algorithm == "fedsgd":
        take = min(batch_size, n)
        return [partition[np.sort(rng.choice(n, size=take, replace=False))]]
    steps_per_epoch = math.ceil(n / batch_size)
    total = local_steps if local_steps is not None else local_epochs * steps_per_epoch
    batches: list[np.ndarray] = []
    while len(batches) < total:
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            batches.append(partition[order[start:start + batch_size]])
            if len(batches) == total:
                break
    return batches


def defense_rng(seed: int, server_round: int, partition_id: int) -> np.random.Generator:
    """Randomness for data-level defenses (mixing, masks): reproducible by the evaluator."""
    return _rng(seed, server_round, partition_id, 1)
