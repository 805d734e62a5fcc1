"""What every process of a run rebuilds from the config: data, partitions, a fresh model.

Clients, the server and the evaluator all call `experiment_for(cfg)`, so they agree on the
data, the partitions and the initial weights without any of it travelling in a message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fedsim.config import ConfigError, ExperimentConfig, from_dict
from fedsim.data import Dataset, load_dataset, partition_indices
from fedsim.data.batches import local_batches
from fedsim.defense_params import POISSON_SAMPLED
from fedsim.models import build_model


@dataclass
class Experiment:
    cfg: ExperimentConfig
    dataset: Dataset
    partitions: list[np.ndarray]

    def new_model(self) -> nn.Module:
        """The round-0 global model: identical in every process for the same seed."""
        torch.manual_seed(self.cfg.seed)
        m = self.cfg.model
        return build_model(m.name, self.dataset.image_shape, self.dataset.num_classes,
                           self.dataset.mean, self.dataset.std, m.norm, m.width)

    @cached_property
    def state_keys(self) -> list[str]:
        """State-dict keys in order: how Flower's legacy list of arrays maps to the model."""
        return list(self.new_model().state_dict())

    @property
    def sampling(self) -> str:
        """How clients draw their local batches: "poisson" under a defense whose accounting
        assumes it (DP-SGD), else "shuffle" (`fedsim.data.batches`)."""
        return ("poisson" if any(d.name in POISSON_SAMPLED for d in self.cfg.defenses)
                else "shuffle")

    def client_batches(self, server_round: int, partition_id: int) -> list[np.ndarray]:
        fed = self.cfg.federation
        return local_batches(
            self.partitions[partition_id], seed=self.cfg.seed, server_round=server_round,
            partition_id=partition_id, algorithm=fed.algorithm, batch_size=fed.batch_size,
            local_epochs=fed.local_epochs, local_steps=fed.local_steps, sampling=self.sampling,
        )


def experiment_for(cfg: ExperimentConfig) -> Experiment:
    return _cached(cfg.model_dump_json())


def _check_writable(folder: Path) -> None:
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"config error: field 'output_dir': {str(folder)!r} cannot be created "
                          f"or written ({str(existing)!r} is not a writable folder)")


def check_runnable(cfg: ExperimentConfig) -> Experiment:
    """The checks that need the data and the machine (data present, partitions possible,
    batches that fit, device available), in one place: `fedsim config check` and
    `fedsim run` both call it, so they agree, and a run stops here before any work."""
    from fedsim.device import resolve_device

    resolve_device(cfg.device)
    try:
        exp = experiment_for(cfg)
    except ValueError as err:
        raise ConfigError(f"config error: {err}") from None
    _check_writable(Path(cfg.output_dir))
    largest = max(len(p) for p in exp.partitions)
    if cfg.federation.batch_size > largest:
        raise ConfigError(
            f"config error: field 'federation.batch_size': {cfg.federation.batch_size} is "
            f"larger than every client's partition (the largest holds {largest} examples); "
            f"allowed: 1..{largest}")
    return exp


@lru_cache(maxsize=4)
def _cached(cfg_json: str) -> Experiment:
    import json

    cfg = from_dict(json.loads(cfg_json))
    d = cfg.data
    ds = load_dataset(d.name, seed=cfg.seed, root=d.root, test_fraction=d.test_fraction,
                      max_train=d.max_train, image_shape=d.image_shape)
    parts = partition_indices(ds.y_train.numpy(), cfg.federation.num_clients, d.partition,
                              d.alpha, cfg.seed)
    return Experiment(cfg, ds, parts)
