"""The inversion loop: optimise dummy images (and label logits) until their update matches.

An `InversionProblem` says what to match; `simulate` says how dummy data becomes an update
(one gradient for FedSGD, a replay of local SGD steps for FedAvg). The fast path computes
every restart in one vmapped forward/backward/double-backward with torch.func; the
reference path is the straightforward autograd loop, one restart at a time, kept for
checking and benchmarking the fast one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, grad_and_value, vmap

from attacker.objectives import DISTANCES
from attacker.priors import BNRecorder, bn_prior, total_variation
from attacker.target import functional_copy


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
    local_batch_size: Optional[int] = None
    box: tuple[float, float] = (0.0, 1.0)   # valid pixel range of the training inputs


@dataclass
class Budget:
    iterations: int = 10_000
    lr: float = 0.1
    tv_weight: float = 1e-4
    bn_weight: float = 1e-2
    restarts: int = 1
    init: str = "randn"
    distance: str = "cosine"
    signed: bool = True
    batch_restarts: str = "auto"   # "auto" | "on" | "off": vmap all restarts in one call


# Measured on 2 CPU threads (benchmarks/attack_speed.py): vmapped restarts run the LeNet
# about 2x faster than one restart after another, but ResNet-18 0.6-1.0x as fast (large
# convolutions gain nothing from vmap on a CPU). "auto" batches on CUDA or for small models.
AUTO_BATCH_MAX_PARAMS = 1_000_000


def _batched(problem: "InversionProblem", budget: Budget, device) -> bool:
    if budget.batch_restarts != "auto":
        return budget.batch_restarts == "on"
    n_params = sum(p.numel() for p in problem.model.parameters())
    return torch.device(device).type == "cuda" or n_params <= AUTO_BATCH_MAX_PARAMS


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


# --------------------------------------------------------------------------- the update
class UpdateSimulator:
    """Maps dummy (x, y) to the update the client would have sent, functionally."""

    def __init__(self, problem: InversionProblem):
        self.problem = problem
        self.model = functional_copy(problem.model)
        self.params = {n: p.detach() for n, p in self.model.named_parameters()}

    def _loss(self, params, x, y):
        recorder = BNRecorder(self.model) if self.problem.bn_targets is not None else None
        try:
            logits = functional_call(self.model, params, (x,))
        finally:
            if recorder is not None:
                recorder.close()
        bn = (bn_prior(recorder.pop(), self.problem.bn_targets) if recorder is not None
              else logits.new_zeros(()))
        return F.cross_entropy(logits, y), bn

    def __call__(self, x, y):
        """Returns (update dict, BatchNorm prior term of the first forward)."""
        p = self.problem
        if p.local_steps == 0:
            return grad(self._loss, has_aux=True)(self.params, x, y)
        # FedAvg replay: SGD steps over fixed sequential batches of the dummy data
        params, bs = self.params, p.local_batch_size or x.shape[0]
        n_batches = math.ceil(x.shape[0] / bs)
        bn = None
        for step in range(p.local_steps):
            i = step % n_batches
            g, bn_step = grad(self._loss, has_aux=True)(params, x[i * bs:(i + 1) * bs],
                                                       y[i * bs:(i + 1) * bs])
            bn = bn_step if bn is None else bn
            params = {n: params[n] - p.local_lr * g[n] for n in params}
        return {n: params[n] - self.params[n] for n in params}, bn


def _labels_from(y_param: torch.Tensor, fixed: Optional[torch.Tensor]) -> torch.Tensor:
    return fixed if fixed is not None else F.softmax(y_param, dim=-1)


def make_objective(problem: InversionProblem, budget: Budget):
    """objective(x, y_logits) -> (total, match) for one restart."""
    sim = UpdateSimulator(problem)
    dist = DISTANCES[budget.distance]
    fixed = problem.labels

    def objective(x, y_logits):
        y = _labels_from(y_logits, fixed)
        update, bn = sim(x, y)
        match = dist(update, problem.target, problem.mask)
        total = match + budget.tv_weight * total_variation(x)
        if problem.bn_targets is not None:
            total = total + budget.bn_weight * bn
        return total, match

    return objective


# --------------------------------------------------------------------------- init
def initial_guess(problem: InversionProblem, budget: Budget, generator: torch.Generator,
                  device) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (budget.restarts, problem.batch_size, *problem.image_shape)
    lo, hi = problem.box
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    if budget.init == "randn":
        x = (mid + half * 0.5 * torch.randn(shape, generator=generator)).clamp(lo, hi)
    elif budget.init == "rand":
        x = lo + (hi - lo) * torch.rand(shape, generator=generator)
    else:
        x = torch.full(shape, mid)
    y = torch.randn((budget.restarts, problem.batch_size, problem.num_classes), generator=generator)
    return x.to(device), y.to(device)


def _schedule(optimizer, iterations):
    milestones = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


def _finish(problem, x, y_logits, losses, iters, t0, history) -> InversionResult:
    best = int(torch.tensor(losses).argmin())
    labels = problem.labels if problem.labels is not None else y_logits[best]
    if labels.dim() > 1:  # soft labels (optimised logits or mixed labels): report the argmax
        labels = labels.argmax(-1)
    return InversionResult(
        images=x[best].detach().clamp(*problem.box).cpu(), labels=labels.detach().cpu(),
        match_loss=float(losses[best]), restart_losses=[float(v) for v in losses],
        iterations=iters, seconds=time.perf_counter() - t0, device=str(x.device),
        history=history,
    )


# --------------------------------------------------------------------------- Adam (fast)
def invert_adam(problem: InversionProblem, budget: Budget, *, seed: int = 0,
                progress: Optional[Callable[[int, float], None]] = None) -> InversionResult:
    """Adam on the (signed) gradient, step decay at 3/8, 5/8, 7/8, pixels kept in the box;
    all restarts in one vmapped call. `progress(step, loss)` is called about 100 times."""
    device = next(problem.model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    x, y_logits = initial_guess(problem, budget, gen, device)
    x.requires_grad_(True)
    y_logits.requires_grad_(problem.labels is None)
    objective = make_objective(problem, budget)
    one = grad_and_value(objective, argnums=(0, 1), has_aux=True)
    step_fn = vmap(one) if _batched(problem, budget, device) else _looped(one)
    opt_vars = [x] + ([y_logits] if problem.labels is None else [])
    opt = torch.optim.Adam(opt_vars, lr=budget.lr)
    sched = _schedule(opt, budget.iterations)
    t0, history = time.perf_counter(), []
    report = max(budget.iterations // 100, 1)
    for it in range(budget.iterations):
        (gx, gy), (total, match) = step_fn(x.detach(), y_logits.detach())
        x.grad = gx.sign() if budget.signed else gx
        if problem.labels is None:
            y_logits.grad = gy
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(*problem.box)
        # Reading the loss forces a device sync: only every `report` steps and at the end.
        if it % report == 0 or it == budget.iterations - 1:
            loss = float(match.min())
            history.append(loss)
            if progress is not None:
                progress(it, loss)
    with torch.no_grad():
        _, (_, match) = step_fn(x.detach(), y_logits.detach())
    return _finish(problem, x, y_logits, match.tolist(), budget.iterations, t0, history)


def _looped(one):
    """The same step as vmap(one), one restart after another, results stacked."""
    def step(xs, ys):
        outs = [one(x, y) for x, y in zip(xs, ys)]
        gx = torch.stack([o[0][0] for o in outs])
        gy = torch.stack([o[0][1] for o in outs])
        return (gx, gy), (torch.stack([o[1][0] for o in outs]),
                          torch.stack([o[1][1] for o in outs]))
    return step


def invert_adam_reference(problem: InversionProblem, budget: Budget, *, seed: int = 0
                          ) -> InversionResult:
    """The plain loop: autograd with create_graph=True, one restart after another."""
    device = next(problem.model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    xs, ys = initial_guess(problem, budget, gen, device)
    model = functional_copy(problem.model)
    params = [p for _, p in model.named_parameters()]
    names = [n for n, _ in model.named_parameters()]
    dist = DISTANCES[budget.distance]
    t0, losses, finals_x = time.perf_counter(), [], []
    for r in range(budget.restarts):
        x = xs[r].clone().requires_grad_(True)
        yl = ys[r].clone().requires_grad_(problem.labels is None)
        opt = torch.optim.Adam([x] + ([yl] if problem.labels is None else []), lr=budget.lr)
        sched = _schedule(opt, budget.iterations)

        def match_loss():
            y = _labels_from(yl, problem.labels)
            loss = F.cross_entropy(model(x), y)
            g = dict(zip(names, torch.autograd.grad(loss, params, create_graph=True)))
            return dist(g, problem.target, problem.mask)

        for _ in range(budget.iterations):
            opt.zero_grad()
            total = match_loss() + budget.tv_weight * total_variation(x)
            total.backward()
            x.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(*problem.box)
        losses.append(float(match_loss().detach()))
        finals_x.append(x.detach())
        ys[r] = yl.detach()
    return _finish(problem, torch.stack(finals_x), ys, losses, budget.iterations, t0, [])


# --------------------------------------------------------------------------- L-BFGS (DLG)
def invert_lbfgs(problem: InversionProblem, budget: Budget, *, seed: int = 0,
                 progress: Optional[Callable[[int, float], None]] = None) -> InversionResult:
    """DLG's optimiser: L-BFGS on the full objective, restarts one after another (L-BFGS
    keeps a curvature history per problem, so restarts cannot share one optimiser)."""
    device = next(problem.model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    xs, ys = initial_guess(problem, budget, gen, device)
    objective = make_objective(problem, budget)
    t0, losses, history = time.perf_counter(), [], []
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
                x.clamp_(*problem.box)
            if progress is not None:
                progress(it, loss)
            history.append(loss)
        with torch.no_grad():
            losses.append(float(objective(x, yl)[1]))
        xs[r], ys[r] = x.detach(), yl.detach()
    return _finish(problem, xs, ys, losses, budget.iterations, t0, history)
