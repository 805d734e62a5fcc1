"""DLG's optimiser: L-BFGS on the full objective (Zhu et al. 2019)."""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch

from attacker.objective import make_objective
from attacker.problem import Budget, InversionProblem, InversionResult, finish, initial_guess


def invert_lbfgs(problem: InversionProblem, budget: Budget, *, seed: int = 0,
                 progress: Optional[Callable[[int, float], None]] = None) -> InversionResult:
    """Restarts one after another: L-BFGS keeps a curvature history per problem, so restarts
    cannot share one optimiser."""
    t0 = time.perf_counter()
    device = next(problem.model.parameters()).device
    xs, ys = initial_guess(problem, budget, torch.Generator().manual_seed(seed), device)
    objective = make_objective(problem, budget)
    coords = problem.coordinates(device)
    losses, history = [], []
    for r in range(budget.restarts):
        x = xs[r].clone().requires_grad_(True)
        yl = ys[r].clone().requires_grad_(problem.labels is None)
        opt = torch.optim.LBFGS([x] + ([yl] if problem.labels is None else []), lr=budget.lr,
                                history_size=100, max_iter=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            total, _ = objective(x, yl)
            total.backward()
            return total

        for it in range(budget.iterations):
            loss = float(opt.step(closure))
            if not math.isfinite(loss):
                break
            with torch.no_grad():
                coords.clamp_(x)
            if progress is not None:
                progress(it, loss)
            history.append(loss)
        with torch.no_grad():
            losses.append(float(objective(x, yl)[1]))
        xs[r], ys[r] = x.detach(), yl.detach()
    return finish(problem, xs, ys, losses, budget.iterations, time.perf_counter() - t0,
                  history, "lbfgs")
