"""What an inversion solves (`InversionProblem`), with what budget (`Budget`), and what it
returns (`InversionResult`): plain data shared by the optimisers."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, create_model

from attacker.local_optimizer import LocalOptimizer
from attacker.mixing import input_labels
from fedsim.config import OPTIMISER_FIELDS, AttackConfig


@dataclass
class InversionProblem:
    model: nn.Module                        # at the round's start
    target: dict[str, torch.Tensor]         # observed update, params only
    batch_size: int
    image_shape: tuple[int, int, int]
    num_classes: int
    labels: Optional[torch.Tensor] = None   # fixed (known or restored); None: optimise jointly
    bn_targets: Optional[list] = None       # BatchNorm prior targets, or None for no prior
    mask: Optional[dict[str, torch.Tensor]] = None  # match only these entries (pruned updates)
    local_steps: int = 0                    # 0: target is a gradient; n >= 1: the weight
                                            # change of n local SGD steps (FedAvg replay)
    local_lr: float = 0.0
    local_batch_sizes: Optional[list[int]] = None  # of each local step; None: the whole batch
    local_optimizer: LocalOptimizer = field(default_factory=LocalOptimizer)  # momentum, decay
    loss_divisor: Optional[float] = None    # a step's loss is its sum over this (DP-SGD's
                                            # expected batch size); None: the batch mean
    box: tuple[float, float] = (0.0, 1.0)   # valid pixel range of the training inputs
    input_mean: Optional[tuple[float, ...]] = None  # the model's input normalisation: the
    input_std: Optional[tuple[float, ...]] = None   # images are optimised as (x - mean) / std
    soft_labels: bool = False               # declared mixed labels: optimised ones stay soft
    mix: Optional[tuple[float, ...]] = None  # `sources` model of a declared mix: k sources
                                             # per input, mixed by these (attacker.mixing)

    @property
    def dummies(self) -> int:
        """Images optimised: the batch, or k sources per input under the `sources` model."""
        return self.batch_size * (len(self.mix) if self.mix else 1)

    def coordinates(self, device) -> "Coordinates":
        return Coordinates.of(self, device)


@dataclass
class Coordinates:
    """Where the optimiser works: z = (x - shift) / scale per channel, the model's own
    normalised input as in Geiping et al.'s released code (measured stronger than pixel
    space on ResNet-18: README, "Attack defaults"). Without a declared normalisation the box's
    centre and a quarter of its width stand in."""

    shift: torch.Tensor   # (1, C, 1, 1)
    scale: torch.Tensor
    lo: torch.Tensor      # the pixel box in z
    hi: torch.Tensor

    @classmethod
    def of(cls, problem: "InversionProblem", device) -> "Coordinates":
        lo, hi = problem.box
        c = problem.image_shape[0]
        mean = problem.input_mean if problem.input_mean is not None else ((lo + hi) / 2,) * c
        std = problem.input_std if problem.input_std is not None else ((hi - lo) / 4,) * c
        shift = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        scale = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        return cls(shift, scale, (lo - shift) / scale, (hi - shift) / scale)

    def to_pixels(self, z: torch.Tensor) -> torch.Tensor:
        return self.shift + self.scale * z

    def clamp_(self, z: torch.Tensor) -> torch.Tensor:
        return z.clamp_(self.lo, self.hi)


class _BudgetBase(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True,
                              allow_inf_nan=False)

    def prior_weights(self) -> dict[str, float]:
        """Weight of each registered regulariser (`attacker.priors.REGULARISERS`)."""
        return {"tv": self.tv_weight, "bn": self.bn_weight}


# The optimiser's settings: exactly the `[attack]` section's optimiser fields, with their
# types, bounds and defaults (`fedsim.config.OPTIMISER_FIELDS`), never restated here.
Budget = create_model(
    "Budget", __base__=_BudgetBase, __doc__="The optimiser's settings (fedsim.config).",
    **{name: (AttackConfig.model_fields[name].annotation, AttackConfig.model_fields[name])
       for name in OPTIMISER_FIELDS})


def budget_of(attack) -> "Budget":
    """The Budget of an `[attack]` section (or anything with the same fields)."""
    return Budget(**{name: getattr(attack, name) for name in OPTIMISER_FIELDS})


@dataclass
class InversionResult:
    images: torch.Tensor                   # (B, C, H, W) inside the problem's pixel box
    labels: torch.Tensor                   # hard labels used or found
    match_loss: float                      # gradient distance of the returned images
    restart_losses: list[float]
    iterations: int
    seconds: float
    device: str
    history: list[float] = field(default_factory=list)
    engine: str = ""                       # how the steps ran (attacker.engine)
    label_probs: Optional[torch.Tensor] = None  # soft labels found (optimised), per input


# initial guesses in normalised coordinates: fn(shape, coordinates, generator) -> z
INITS = {
    "randn": lambda shape, co, g: torch.randn(shape, generator=g),  # the released code's
    "rand": lambda shape, co, g: co.lo + (co.hi - co.lo) * torch.rand(shape, generator=g),
    "zeros": lambda shape, co, g: torch.zeros(shape),  # the mean image
}


def initial_guess(problem: InversionProblem, budget: Budget, generator: torch.Generator,
                  device) -> tuple[torch.Tensor, torch.Tensor]:
    """Dummy images in normalised coordinates for every restart (drawn on the CPU, so every
    device starts alike), inside the box, and dummy label logits: `randn` is N(0, 1) in z
    (the released code's start), `rand` uniform over the box, `zeros` the mean image."""
    shape = (budget.restarts, problem.dummies, *problem.image_shape)
    co = problem.coordinates("cpu")
    z = INITS[budget.init](shape, co, generator)
    z = torch.max(torch.min(z, co.hi), co.lo)
    y = torch.randn((budget.restarts, problem.dummies, problem.num_classes), generator=generator)
    return z.to(device), y.to(device)


def step_milestones(iterations: int) -> list[int]:
    """Learning-rate decay by 10 at 3/8, 5/8 and 7/8 of the iterations (Geiping et al.)."""
    return [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]


def decays_before(iterations: int, step: int) -> int:
    """How many times the learning rate has decayed by step `step` (from 0), as torch's
    MultiStepLR counts: every milestone at or before it, a repeated one each time (short
    budgets: 1 iteration has milestones 0, 0, 0)."""
    return bisect.bisect_right(step_milestones(iterations), step)


def finish(problem: InversionProblem, z, y_logits, losses, iters, seconds, history,
           engine: str = "") -> InversionResult:
    """Keep the restart with the lowest gradient distance; images back in pixel space."""
    best = int(torch.tensor(losses).nan_to_num(float("inf")).argmin())
    x = problem.coordinates(z.device).to_pixels(z.detach())
    probs = None if problem.labels is not None else input_labels(problem.mix, y_logits[best], None)
    labels = problem.labels if probs is None else probs
    if labels.dim() > 1:  # soft labels (optimised logits or mixed labels): report the argmax
        labels = labels.argmax(-1)
    return InversionResult(
        images=x[best].detach().clamp(*problem.box).cpu(), labels=labels.detach().cpu(),
        match_loss=float(losses[best]), restart_losses=[float(v) for v in losses],
        iterations=iters, seconds=seconds, device=str(x.device), history=history,
        engine=engine, label_probs=None if probs is None else probs.detach().cpu(),
    )
