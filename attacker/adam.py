"""The fast Adam inversion: every restart optimised at once by the engine's step.

Adam on the (optionally signed) gradient, learning rate decayed by 10 at 3/8, 5/8 and 7/8
of the iterations, images optimised in the model's normalised coordinates and clamped to
the pixel box after every step, the restart with the lowest gradient distance kept
(Geiping et al. 2020). `attacker.reference` is the same method as a
plain autograd loop; the two take the same steps from the same start.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from attacker.engine import (batch_restarts, build_step, cpu_candidates, fastest_step,
                             resolve_mode)
from attacker.objective import make_objective
from attacker.problem import (Budget, InversionProblem, InversionResult, finish, initial_guess,
                              decays_before)


class AdamIteration:
    """One iteration (step, gradient, Adam update, clamp) on fixed tensors; with
    `cuda_graph` it is captured once and every call replays it without a host sync."""

    def __init__(self, step, x0, y0, budget: Budget, coords, optimise_labels: bool,
                 cuda_graph: bool = False):
        self.step, self.coords, self.signed = step, coords, bool(budget.signed)
        self.optimise_labels = optimise_labels
        self.x = x0.clone().requires_grad_(True)
        self.y = y0.clone().requires_grad_(optimise_labels)
        variables = [self.x] + ([self.y] if optimise_labels else [])
        lr = torch.tensor(budget.lr, device=x0.device) if cuda_graph else budget.lr
        self.opt = torch.optim.Adam(variables, lr=lr, capturable=cuda_graph)
        self.graph = self._capture(x0, y0, budget.lr) if cuda_graph else None

    def _once(self):
        (gx, gy), (_, match) = self.step(self.x.detach(), self.y.detach())
        gx = gx.sign() if self.signed else gx
        if self.x.grad is None:
            self.x.grad = gx
        else:
            self.x.grad.copy_(gx)
        if self.optimise_labels:
            if self.y.grad is None:
                self.y.grad = gy
            else:
                self.y.grad.copy_(gy)
        self.opt.step()
        with torch.no_grad():
            self.coords.clamp_(self.x)
        return match

    def _capture(self, x0, y0, lr):
        """Warm up on a side stream (allocations, cuDNN choices), restore the start and the
        optimiser state, then capture one iteration."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._once()
        torch.cuda.current_stream().wait_stream(side)
        self._reset(x0, y0, lr)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.match = self._once()
        self._reset(x0, y0, lr)
        return graph

    def _reset(self, x0, y0, lr):
        with torch.no_grad():
            self.x.copy_(x0)
            self.y.copy_(y0)
        for state in self.opt.state.values():
            for value in state.values():
                value.zero_()
        self.set_lr(lr)

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def __call__(self) -> torch.Tensor:
        """One iteration; returns the gradient distance per restart (before the update)."""
        if self.graph is None:
            return self._once()
        self.graph.replay()
        return self.match


def engine_for(problem: InversionProblem, budget: Budget, objective, x0, y0,
               members=None, plain=None) -> tuple[AdamIteration, object, str]:
    """(iteration, step, engine name) of `objective` from the start (x0, y0): the mode and
    restart batching chosen for this problem's model and budget (`attacker.engine`);
    `plain()` builds the objective on plain autograd, for the eager one-restart loop."""
    device = x0.device
    n_params = sum(p.numel() for p in problem.model.parameters())
    batched = batch_restarts(budget.batch_restarts, n_params, device, budget.restarts)
    at_once = x0.shape[:-3].numel() // (1 if batched else budget.restarts)
    mode = resolve_mode(budget.compile, device, n_params, budget.iterations,
                        batch=at_once, vmapped=batched or members is not None)
    if mode == "probe":
        step, mode = fastest_step(objective, x0, y0, batched=batched, members=members,
                                  plain=plain,
                                  candidates=cpu_candidates(n_params, budget.iterations),
                                  iterations=budget.iterations)
    else:
        step, mode = build_step(objective, x0, y0, batched=batched, mode=mode,
                                members=members, plain=plain)
    it = AdamIteration(step, x0, y0, budget, problem.coordinates(device), problem.labels is None,
                       cuda_graph=mode == "cudagraph")
    return it, step, f"{mode}{'+vmap' if batched else ''}"


def prepare(problem: InversionProblem, budget: Budget, seed: int = 0):
    """(iteration, step, engine name): the traced, compiled or captured loop body, ready to
    run from the seeded start. Tracing and compiling happen here, once per shape."""
    device = next(problem.model.parameters()).device
    x0, y0 = initial_guess(problem, budget, torch.Generator().manual_seed(seed), device)
    return engine_for(problem, budget, make_objective(problem, budget), x0, y0,
                      plain=lambda: make_objective(problem, budget, autograd=True))


def iterate(it: AdamIteration, budget: Budget, report: Callable[[int, torch.Tensor], None]
            ) -> None:
    """Every iteration with the step decay; `report(step, match)` about 100 times (each
    read of the loss is a device sync on CUDA)."""
    every, lr, decays = max(budget.iterations // 100, 1), budget.lr, 0
    for i in range(budget.iterations):
        while decays < decays_before(budget.iterations, i):
            lr, decays = lr * 0.1, decays + 1
            it.set_lr(lr)
        match = it()
        if i % every == 0 or i == budget.iterations - 1:
            report(i, match)


def invert_adam(problem: InversionProblem, budget: Budget, *, seed: int = 0,
                progress: Optional[Callable[[int, float], None]] = None) -> InversionResult:
    """All restarts at once; `progress(step, loss)` is called about 100 times."""
    t0 = time.perf_counter()
    it, step, engine = prepare(problem, budget, seed)
    history = []

    def report(i, match):
        history.append(float(match.min()))
        if progress is not None:
            progress(i, history[-1])

    iterate(it, budget, report)
    with torch.no_grad():
        _, (_, match) = step(it.x.detach(), it.y.detach())
    return finish(problem, it.x, it.y, match.tolist(), budget.iterations,
                  time.perf_counter() - t0, history, engine)
