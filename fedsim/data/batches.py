"""The private-batch oracle: which examples a client trained on in a round.

Batches are a pure function of (seed, round, partition, local step), so they never need to
travel in a message: the client derives them to train and the evaluator derives them again
to score a reconstruction. The attacker never imports this module.

Two samplings: "shuffle" (fixed-size batches of a shuffle, the usual local training) and
"poisson" (every example joins each step's batch independently with probability
q = batch_size / partition size: what DP-SGD's accountant assumes, so its epsilon holds).
"""

from __future__ import annotations

import math

import numpy as np


SAMPLINGS = ("shuffle", "poisson")
_SHUFFLE, _DEFENSE, _POISSON = 0, 1, 2  # independent random streams of one client round


def _rng(seed: int, server_round: int, partition_id: int, stream: int,
         *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, server_round, partition_id, stream, *more])


def steps_per_round(n: int, *, algorithm: str, batch_size: int, local_epochs: int = 1,
                    local_steps: int | None = None) -> int:
    """Local steps of a round: one (FedSGD), `local_steps`, or `local_epochs` passes of
    ceil(n / batch_size) steps (under Poisson sampling the expected steps of a pass)."""
    if algorithm == "fedsgd":
        return 1
    return local_steps if local_steps is not None else local_epochs * math.ceil(n / batch_size)


def round_examples(n: int, *, algorithm: str, batch_size: int, local_epochs: int = 1,
                   local_steps: int | None = None, sampling: str = "shuffle") -> int:
    """Examples a client of partition size n trains on in one round (the `num-examples`
    it reports, which FedAvg weights by), known without drawing any batch: with "shuffle"
    exactly (the last batch of a pass may be smaller), with "poisson" its expectation."""
    steps = steps_per_round(n, algorithm=algorithm, batch_size=batch_size,
                            local_epochs=local_epochs, local_steps=local_steps)
    if sampling == "poisson" or algorithm == "fedsgd":
        return steps * min(batch_size, n)
    per_pass = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    passes, rest = divmod(steps, len(per_pass))
    return passes * n + sum(per_pass[:rest])


def poisson_rate(n: int, batch_size: int) -> float:
    """q = batch_size / n, at most 1: each example's chance to join a step's batch."""
    return min(batch_size / max(n, 1), 1.0)


def local_batches(partition: np.ndarray, *, seed: int, server_round: int, partition_id: int,
                  algorithm: str, batch_size: int, local_epochs: int = 1,
                  local_steps: int | None = None, sampling: str = "shuffle") -> list[np.ndarray]:
    """Train-set indices of each local step.

    "shuffle": FedSGD, one batch of ``batch_size`` drawn without replacement (the whole
    partition if smaller); FedAvg, ``local_steps`` batches, or ``local_epochs`` passes over
    a fresh shuffle of the partition each epoch, the last batch of a pass possibly smaller.
    "poisson": `steps_per_round` steps, each an independent Poisson draw at rate
    `poisson_rate` from its own random stream (seed, round, partition, step): batch sizes
    vary around ``batch_size``, a batch may be empty, an example may recur across steps.
    """
    n = len(partition)
    total = steps_per_round(n, algorithm=algorithm, batch_size=batch_size,
                            local_epochs=local_epochs, local_steps=local_steps)
    if sampling == "poisson":
        q = poisson_rate(n, batch_size)
        return [partition[_rng(seed, server_round, partition_id, _POISSON, step).random(n) < q]
                for step in range(total)]
    if sampling != "shuffle":
        raise ValueError(f"sampling {sampling!r}: allowed {SAMPLINGS}")
    rng = _rng(seed, server_round, partition_id, _SHUFFLE)
    if algorithm == "fedsgd":
        take = min(batch_size, n)
        return [partition[np.sort(rng.choice(n, size=take, replace=False))]]
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
    return _rng(seed, server_round, partition_id, _DEFENSE)
