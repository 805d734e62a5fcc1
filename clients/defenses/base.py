"""What a defense is: a small object that acts at one stage of a client's round.

Stages, in the order a client round passes through them:
  data      -> transforms each training batch (MixUp, Intra-InstaHide)
  training  -> changes how gradients are computed (DP-SGD)
  update    -> transforms the update before it leaves (GradPrune)
  transport -> Flower mods and strategy wrappers (Flower DP, secure aggregation)
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import ValidationError

from fedsim.defense_params import DefenseParams

STAGES = ("data", "training", "update", "transport")


class Defense:
    name: ClassVar[str]
    stage: ClassVar[str]
    Params: ClassVar[type[DefenseParams]] = DefenseParams

    def __init__(self, **params: Any):
        try:
            self.params = self.Params(**params)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ValueError(
                f"defenses entry {self.name!r}, param '{field}': {first['msg']}"
            ) from None

    # every stage ------------------------------------------------------------------------
    def check_config(self, cfg) -> None:
        """Refuse, at config time, an experiment this defense cannot run in."""

    # data stage -------------------------------------------------------------------------
    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                        rng: np.random.Generator, pool) -> tuple[torch.Tensor, torch.Tensor]:
        """`pool` is (images, labels, batch positions in it) of the client's own data."""
        raise NotImplementedError

    # update stage -----------------------------------------------------------------------
    def transform_update(self, update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # training stage ---------------------------------------------------------------------
    def train(self, model, batches, fed, state: dict):
        """Replace the local training step: (update, loss, accuracy, examples, extras)."""
        raise NotImplementedError

    # transport stage --------------------------------------------------------------------
    legacy_workflow: ClassVar[bool] = False  # the round runs on Flower's legacy path

    def client_mods(self) -> list:
        """Flower client mods this defense adds around the ClientApp."""
        return []

    # what the defense did to what leaves the client -----------------------------------
    def effects(self) -> dict[str, Any]:
        """Facts about the upload that the receiver may rely on, declared by the defense
        (`clients.local.declared_effects` merges them; they travel with the update):
        `pixel_box` [lo, hi] of the training inputs, `sparsified` (zeros are pruned
        entries, not values), `mixed_labels` (soft labels), `sign_flipped` (inputs carry a
        random per-pixel sign)."""
        return {}

    def __repr__(self) -> str:
        return f"{self.name}({self.params.model_dump()})"
