"""What an inversion solves (`InversionProblem`), with what budget (`Budget`), and what it
returns (`InversionResult`): plain data shared by the optimisers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from attacker.local_optimizer import LocalOptimizer


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
    box: tuple[float, float] = (0.0, 1.0)   # valid pixel range of the training inputs
    input_mean: Optional[tuple[float, ...]] = None  # the model's input normalisation: the
    input_std: Optional[tuple[float, ...]] = None   # images are optimised as (x - mean) / std

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


@dataclass
class Budget:
    """The optimiser's settings. Defaults follow Geiping et al.'s released Inverting Gradients
    (one cosine over all parameters, TV weight 0.1 relative to it, plain Adam at lr 0.1 with
    step decay), re-measured in pixel space on fedsim's models: README, "Attack defaults"."""

    iterations: int = 10_000
    lr: float = 0.1
    tv_weight: float = 0.1
    bn_weight: float = 1e-2
    restarts: int = 1
    init: str = "randn"
    distance: Optional[str] = None   # attacker.distances; None: the attack's own (cosine)
    signed: Optional[bool] = None    # step on the sign of the gradient; None: the attack's own
    batch_restarts: str = "auto"   # "auto" | "on" | "off": vmap all restarts in one call
    compile: str = "auto"          # attacker.engine.MODES: how the steps run

    def prior_weights(self) -> dict[str, float]:
        """Weight of each registered regulariser (`attacker.priors.REGULARISERS`)."""
        return {"tv": self.tv_weight, "bn": self.bn_weight}


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


def initial_guess(problem: InversionProblem, budget: Budget, generator: torch.Generator,
                  device) -> tuple[torch.Tensor, torch.Tensor]:
    """Dummy images in normalised coordinates for every restart (drawn on the CPU, so every
    device starts alike), inside the box, and dummy label logits: `randn` is N(0, 1) in z
    (the released code's start), `rand` uniform over the box, `zeros` the mean image."""
    shape = (budget.restarts, problem.batch_size, *problem.image_shape)
    co = problem.coordinates("cpu")
    if budget.init == "randn":
        z = torch.randn(shape, generator=generator)
    elif budget.init == "rand":
        z = co.lo + (co.hi - co.lo) * torch.rand(shape, generator=generator)
    else:
        z = torch.zeros(shape)
    z = torch.max(torch.min(z, co.hi), co.lo)
    y = torch.randn((budget.restarts, problem.batch_size, problem.num_classes), generator=generator)
    return z.to(device), y.to(device)


def step_milestones(iterations: int) -> list[int]:
    """Learning-rate decay by 10 at 3/8, 5/8 and 7/8 of the iterations (Geiping et al.)."""
    return [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]


def finish(problem: InversionProblem, z, y_logits, losses, iters, seconds, history,
           engine: str = "") -> InversionResult:
    """Keep the restart with the lowest gradient distance; images back in pixel space."""
    best = int(torch.tensor(losses).nan_to_num(float("inf")).argmin())
    x = problem.coordinates(z.device).to_pixels(z.detach())
    labels = problem.labels if problem.labels is not None else y_logits[best]
    if labels.dim() > 1:  # soft labels (optimised logits or mixed labels): report the argmax
        labels = labels.argmax(-1)
    return InversionResult(
        images=x[best].detach().clamp(*problem.box).cpu(), labels=labels.detach().cpu(),
        match_loss=float(losses[best]), restart_losses=[float(v) for v in losses],
        iterations=iters, seconds=seconds, device=str(x.device), history=history,
        engine=engine,
    )
