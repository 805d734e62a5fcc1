"""The evaluator's privileged side: the only code that re-derives a client's private batch.

It grants the attacker exactly what its knowledge settings allow (true labels under
labels="known", the batch's own BatchNorm statistics under bn_stats="exact") and hands the
originals to the scoring step, never to the attack.
"""

from __future__ import annotations

import numpy as np
import torch

from attacker.knowledge import Knowledge
from attacker.priors import batch_bn_stats
from attacker.target import declared_data_size
from clients.defenses import build_defenses
from clients.local import training_batches
from fedsim.capture import AGGREGATE, Capture
from fedsim.config import KnowledgeConfig
from fedsim.experiment import Experiment


def member_partitions(cap: Capture) -> list[int]:
    """The clients behind a capture: one, or all of a round's aggregate."""
    if cap.partition_id == AGGREGATE:
        return list(cap.facts.partitions)
    return [cap.partition_id]


def private_indices(exp: Experiment, cap: Capture) -> np.ndarray:
    """Train-set indices the client(s) used in that round, in first-use order."""
    out = []
    for pid in member_partitions(cap):
        batches = np.concatenate(exp.client_batches(cap.round, pid))
        _, first = np.unique(batches, return_index=True)
        out.append(batches[np.sort(first)])
    return np.concatenate(out)


def occurrence_indices(exp: Experiment, cap: Capture) -> np.ndarray:
    """Train-set indices of every example of every local step, in step order (an example
    drawn in two Poisson batches appears twice): what the replay's dummies stand for."""
    return np.concatenate([idx for pid in member_partitions(cap)
                           for idx in exp.client_batches(cap.round, pid)])


def private_batch(exp: Experiment, cap: Capture) -> tuple[torch.Tensor, torch.Tensor]:
    """The original private images (in [0, 1]) and labels behind a capture."""
    idx = private_indices(exp, cap)
    return exp.dataset.x_train[idx], exp.dataset.y_train[idx]


def exact_bn_targets(exp: Experiment, cap: Capture, model: torch.nn.Module):
    """Per BatchNorm layer, mean and variance of its input on the first training batch the
    client actually fed the model (after its data-stage defenses)."""
    batches = training_batches(exp, cap.round, member_partitions(cap)[0],
                               build_defenses(exp.cfg), next(model.parameters()).device)
    return batch_bn_stats(model, next((x for x, _ in batches if len(x)), batches[0][0]))


def training_labels(exp: Experiment, cap: Capture, count: int) -> torch.Tensor:
    """The labels the client trained with: hard labels, or the soft mixed labels of a
    data-stage defense (MixUp, InstaHide), in first-use order; under Poisson sampling one
    per example of every step, as the replay's dummies (`occurrence_indices`)."""
    defenses = build_defenses(exp.cfg)
    if not any(d.stage == "data" for d in defenses):
        if exp.sampling == "poisson":
            return exp.dataset.y_train[occurrence_indices(exp, cap)][:count]
        return private_batch(exp, cap)[1]
    labels = [y for pid in member_partitions(cap)
              for _, y in training_batches(exp, cap.round, pid, defenses, torch.device("cpu"))]
    return torch.cat(labels)[:count]


def grant_knowledge(settings: KnowledgeConfig, exp: Experiment, cap: Capture,
                    model: torch.nn.Module) -> Knowledge:
    declared = declared_data_size(cap.facts, cap.kind)
    batch_size = declared if settings.batch_size == "known" else int(settings.batch_size)
    labels = training_labels(exp, cap, batch_size) if settings.labels == "known" else None
    bn = exact_bn_targets(exp, cap, model) if settings.bn_stats == "exact" else None
    return Knowledge(bn_stats=settings.bn_stats, labels_mode=settings.labels,
                     batch_size=batch_size, labels=labels, bn_targets=bn)
