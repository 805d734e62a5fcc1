"""What a defense is: a small object that acts at one stage of a client's round.

Stages, in the order a client round passes through them:
  data      -> transforms each training batch (MixUp, Intra-InstaHide)
  training  -> changes how gradients are computed (DP-SGD)
  update    -> transforms the update before it leaves (GradPrune)
  transport -> Flower mods and strategy wrappers (Flower DP, secure aggregation)
"""

from __future__ import annotations

from typing import Any, ClassVar, get_origin

import numpy as np
import torch
from pydantic import ValidationError

from fedsim.defense_params import DefenseParams

STAGES = ("data", "training", "update", "transport")


class ParamsError(ValueError):
    """A defense's params that its schema refuses: `field` (a dotted path under `params`,
    empty for a relation between params) and `problem`, saying what the field expects."""

    def __init__(self, defense: str, schema: type[DefenseParams], error: dict):
        self.field = ".".join(str(p) for p in error["loc"])
        spec = schema.model_fields.get(self.field)
        if error["type"] == "extra_forbidden":
            self.problem = (f"unknown param of {defense!r}; its params are "
                            f"{sorted(schema.model_fields)}")
        else:
            expected = f" (expected {_type_name(spec.annotation)})" if spec else ""
            got = f", got {error['input']!r}" if spec else ""
            self.problem = f"{error['msg'].removeprefix('Value error, ')}{expected}{got}"
        super().__init__(f"defenses entry {defense!r}, params.{self.field}: {self.problem}")


def _type_name(annotation) -> str:
    """`float`, `Optional[float]`, `Literal['server', 'client']`."""
    if get_origin(annotation) is None:
        return getattr(annotation, "__name__", str(annotation))
    return str(annotation).replace("typing.", "")


class Defense:
    name: ClassVar[str]
    stage: ClassVar[str]
    Params: ClassVar[type[DefenseParams]] = DefenseParams
    differentially_private: ClassVar[bool] = False  # reports an epsilon (one per run)

    def __init__(self, **params: Any):
        try:
            self.params = self.Params(**params)
        except ValidationError as err:
            raise ParamsError(self.name, self.Params, err.errors()[0]) from None

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

    # privacy accounting -----------------------------------------------------------------
    accounting: ClassVar[str | None] = None  # what the client's reported epsilon bounds

    def account(self, state: dict, fed) -> dict[str, float]:
        """Called once per round the client trains, after training: record this round's
        privacy cost in the client's persistent `state` and return the totals so far as
        reply metrics (`dp-epsilon`, `dp-delta`), or nothing."""
        return {}

    # what the defense did to what leaves the client -----------------------------------
    def effects(self) -> dict[str, Any]:
        """Facts about the upload that the receiver may rely on, declared by the defense
        (`clients.local.declared_effects` merges them; they travel with the update):
        `pixel_box` [lo, hi] of the training inputs, `sparsified` (zeros are pruned
        entries, not values), `mixed_labels` (soft labels), `mix_k` and `mix_coefficients`
        (examples per mix and their mean sorted weights), `sign_flipped` (inputs carry a
        random per-pixel sign), `poisson_batches` (each local step's batch is its own
        Poisson draw: examples may recur across steps), `sum_over_batch_size` (a step's
        gradient is the batch's summed loss gradient over the declared batch_size, not
        the batch mean)."""
        return {}

    def __repr__(self) -> str:
        return f"{self.name}({self.params.model_dump()})"
