"""Inverting Gradients (Geiping et al. 2020): one cosine distance over all parameters
(`attack.distance` picks another), TV prior, Adam (`attack.signed` for signed steps) in the
model's normalised input coordinates with step decay (`attacker.adam`)."""

from attacker.attacks.base import Attack
from attacker.adam import invert_adam
from attacker.groups import invert_group


class InvertingGradients(Attack):
    name = "inverting_gradients"

    def solve(self, problem, seed, progress):
        return invert_adam(problem, self.budget, seed=seed, progress=progress)

    def solve_group(self, problems, seeds):
        return invert_group(problems, self.budget, seeds)
