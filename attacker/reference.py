"""Geiping et al.'s Inverting Gradients (NeurIPS 2020) as a plain autograd loop, written
from the paper and its released defaults, independent of fedsim's objective code.

This is the yardstick: the fast path (`attacker.adam`) must take the same steps from the
same start (tests/test_engine.py), and `benchmarks/attack_speed.py` times it against this.
Per restart: dummy images z in the model's normalised coordinates (x = mean + std * z) from
the same initial guess; loss = 1 - cos(grad(x), target), one cosine over all parameters,
+ tv_weight * TV(z); Adam at lr on the (signed, if asked) gradient, decayed by 10 at 3/8,
5/8, 7/8 of the iterations; z clamped so that x stays in the pixel box; the restart whose
final gradient distance is lowest wins.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from attacker.problem import (Budget, InversionProblem, InversionResult, finish, initial_guess,
                              step_milestones)
from attacker.target import functional_copy


def _tv(x: torch.Tensor) -> torch.Tensor:
    return ((x[..., :, 1:] - x[..., :, :-1]).abs().mean()
            + (x[..., 1:, :] - x[..., :-1, :]).abs().mean())


def invert_reference(problem: InversionProblem, budget: Budget, *, seed: int = 0
                     ) -> InversionResult:
    """Inverting Gradients on a FedSGD gradient, one restart after another."""
    if problem.local_steps or problem.bn_targets is not None or problem.mask is not None:
        raise ValueError("the reference implements plain Inverting Gradients on a gradient")
    t0 = time.perf_counter()
    device = next(problem.model.parameters()).device
    xs, ys = initial_guess(problem, budget, torch.Generator().manual_seed(seed), device)
    model = functional_copy(problem.model)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    keep = [i for i, n in enumerate(names) if n in problem.target]
    target = [problem.target[names[i]] for i in keep]
    target_norm = sum(t.pow(2).sum() for t in target).sqrt()

    co = problem.coordinates(device)

    def gradient_distance(z, y_logits):
        y = problem.labels if problem.labels is not None else F.softmax(y_logits, dim=-1)
        loss = F.cross_entropy(model(co.shift + co.scale * z), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        grads = [grads[i] for i in keep]
        dot = sum((g * t).sum() for g, t in zip(grads, target))
        norm = sum(g.pow(2).sum() for g in grads).sqrt()
        return 1 - dot / (norm * target_norm + 1e-12)

    losses, finals = [], []
    for r in range(budget.restarts):
        x = xs[r].clone().requires_grad_(True)
        yl = ys[r].clone().requires_grad_(problem.labels is None)
        opt = torch.optim.Adam([x] + ([yl] if problem.labels is None else []), lr=budget.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=step_milestones(budget.iterations), gamma=0.1)
        for _ in range(budget.iterations):
            opt.zero_grad()
            loss = gradient_distance(x, yl) + budget.tv_weight * _tv(x)
            # gradients of the dummies only: the model's own .grad is never read
            loss.backward(inputs=[x] + ([yl] if problem.labels is None else []))
            if budget.signed:
                x.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.data = torch.max(torch.min(x, co.hi), co.lo)
        losses.append(float(gradient_distance(x, yl).detach()))
        finals.append(x.detach())
        ys[r] = yl.detach()
    return finish(problem, torch.stack(finals), ys, losses, budget.iterations,
                  time.perf_counter() - t0, [], "reference")
