"""What an attack is: a recipe that turns an observation plus knowledge into an
`InversionProblem`, and an optimiser that solves it."""

from __future__ import annotations

import logging
from typing import Callable, ClassVar, Optional

import torch

from attacker.problem import Budget, InversionProblem, InversionResult
from attacker.knowledge import Knowledge
from attacker.labels import restore_labels
from attacker.mixing import mix_coefficients
from attacker.priors import inferred_bn_targets
from attacker.target import Observation

log = logging.getLogger("fedsim")


def informative(update: dict[str, torch.Tensor], rel: float = 1e-5) -> dict[str, torch.Tensor]:
    """Drop tensors whose update is structurally zero (norm below rel x the largest, e.g. a
    bias right before a normalisation layer): they carry no signal, and a per-layer cosine
    would weigh their rounding noise like a real layer."""
    norms = {k: float(v.float().norm()) for k, v in update.items()}
    top = max(norms.values(), default=0.0)
    return {k: v for k, v in update.items() if norms[k] > rel * top} or update


def _channels(values) -> Optional[tuple[float, ...]]:
    return tuple(float(v) for v in values) if values is not None else None


class Attack:
    name: ClassVar[str]
    distance: ClassVar[str] = "cosine"
    uses_bn_prior: ClassVar[bool] = False
    signed: ClassVar[bool] = False

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuse, at config time, an experiment this attack cannot be run on."""

    def __init__(self, budget: Budget):
        """The budget's `distance` and `signed`, where set, override the attack's own."""
        self.budget = budget.model_copy(update={
            "distance": budget.distance or self.distance,
            "signed": self.signed if budget.signed is None else budget.signed})

    # -------------------------------------------------------------- building the problem
    def labels(self, obs: Observation, knowledge: Knowledge) -> Optional[torch.Tensor]:
        if knowledge.labels_mode == "known":
            return knowledge.labels.to(next(obs.model.parameters()).device)
        if knowledge.labels_mode == "restored":
            if self.effects(obs).get("mixed_labels"):  # soft: optimised with the images
                return None
            return restore_labels(self.label_signal(obs), obs.model, knowledge.batch_size,
                                  obs.image_shape).to(next(obs.model.parameters()).device)
        return None

    def label_signal(self, obs: Observation) -> dict[str, torch.Tensor]:
        """The update the label rules read: the gradient itself for FedSGD."""
        return obs.update

    def bn_targets(self, obs: Observation, knowledge: Knowledge):
        if not self.uses_bn_prior or knowledge.bn_stats == "none":
            return None
        if knowledge.bn_stats == "exact":
            return knowledge.bn_targets
        targets = inferred_bn_targets(obs.model)
        return targets or None

    def problem(self, obs: Observation, knowledge: Knowledge) -> InversionProblem:
        update = informative(obs.update)
        mask = None
        if self.effects(obs).get("sparsified"):  # declared: match surviving entries only
            mask = {n: (t != 0).to(t.dtype) for n, t in update.items()}
        return InversionProblem(
            model=obs.model, target=update, batch_size=knowledge.batch_size,
            image_shape=obs.image_shape, num_classes=obs.num_classes,
            labels=self.labels(obs, knowledge), bn_targets=self.bn_targets(obs, knowledge),
            mask=mask, box=tuple(self.effects(obs).get("pixel_box", (0.0, 1.0))),
            input_mean=_channels(obs.facts.mean), input_std=_channels(obs.facts.std),
            loss_divisor=(float(obs.facts.batch_size)
                          if self.effects(obs).get("sum_over_batch_size")
                          and obs.facts.batch_size else None),
            soft_labels=bool(self.effects(obs).get("mixed_labels")),
            mix=mix_coefficients(self.effects(obs), self.budget.mixing),
        )

    @staticmethod
    def sign_flipped(obs: Observation) -> bool:
        """Declared random per-pixel sign flips (Intra-InstaHide): the best guess is |x|."""
        return bool(Attack.effects(obs).get("sign_flipped"))

    @staticmethod
    def effects(obs: Observation) -> dict:
        """What the client's defenses declared about the upload (recorded in the capture)."""
        return obs.facts.effects

    # -------------------------------------------------------------- solving it
    def solve(self, problem: InversionProblem, seed: int,
              progress: Optional[Callable[[int, float], None]]) -> InversionResult:
        raise NotImplementedError

    def solve_group(self, problems: list[InversionProblem], seeds: list[int]
                    ) -> list[InversionResult]:
        """Problems of one shape (`attacker.groups.shape_key`), each from its seed: one
        after another here; the Adam attacks solve them in one optimisation."""
        return [self.solve(p, s, None) for p, s in zip(problems, seeds)]

    def finish(self, obs: Observation, result: InversionResult) -> InversionResult:
        if self.sign_flipped(obs):  # InstaHide: the attacker's best guess is |mix|
            result.images = result.images.abs()
        return result

    def run(self, obs: Observation, knowledge: Knowledge, *, seed: int = 0,
            progress: Optional[Callable[[int, float], None]] = None) -> InversionResult:
        return self.finish(obs, self.solve(self.problem(obs, knowledge), seed, progress))
