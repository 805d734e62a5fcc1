"""Inverting Gradients (Geiping et al. 2020): 1 - cosine per layer, TV prior, signed Adam."""

from attacker.attacks.base import Attack
from attacker.adam import invert_adam


class InvertingGradients(Attack):
    name = "inverting_gradients"

    def solve(self, problem, seed, progress):
        return invert_adam(problem, self.budget, seed=seed, progress=progress)
