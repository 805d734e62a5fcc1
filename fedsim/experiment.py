"""What every process of a run rebuilds from the config: data, partitions, a fresh model.

Clients, the server and the evaluator all call `experiment_for(cfg)`, so they agree on the
data, the partitions and the initial weights without any of it travelling in a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import torch
import torch.nn as nn

from fedsim.config import ExperimentConfig, from_dict
from fedsim.data import Dataset, load_dataset, partition_indices
from fedsim.data.batches import local_batches
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

    def client_batches(self, server_round: int, partition_id: int) -> list[np.ndarray]:
        fed = self.cfg.federation
        return local_batches(
            self.partitions[partition_id], seed=self.cfg.seed, server_round=server_round,
            partition_id=partition_id, algorithm=fed.algorithm, batch_size=fed.batch_size,
            local_epochs=fed.local_epochs, local_steps=fed.local_steps,
        )


def experiment_for(cfg: ExperimentConfig) -> Experiment:
    return _cached(cfg.model_dump_json())


@lru_cache(maxsize=4)
def _cached(cfg_json: str) -> Experiment:
    import json

    cfg = from_dict(json.loads(cfg_json))
    d = cfg.data
    ds = load_dataset(d.name, seed=cfg.seed, root=d.root, test_fraction=d.test_fraction,
                      max_train=d.max_train)
    parts = partition_indices(ds.y_train.numpy(), cfg.federation.num_clients, d.partition,
                              d.alpha, cfg.seed)
    return Experiment(cfg, ds, parts)
