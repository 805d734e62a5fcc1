"""Deep Leakage from Gradients (Zhu et al. 2019): L2 gradient distance, L-BFGS, labels
optimised jointly unless the knowledge settings fix them."""

from attacker.attacks.base import Attack
from attacker.lbfgs import invert_lbfgs


class DLG(Attack):
    name = "dlg"
    distance = "l2"
    signed = False

    def __init__(self, budget):
        super().__init__(budget)
        self.budget.tv_weight = 0.0  # DLG has no image prior

    def labels(self, obs, knowledge):
        return None if knowledge.labels_mode != "known" else super().labels(obs, knowledge)

    def solve(self, problem, seed, progress):
        return invert_lbfgs(problem, self.budget, seed=seed, progress=progress)
