"""The attack objective as a composition: how dummy data becomes an update (FedSGD gradient
or FedAvg replay), a distance to the observed update, and weighted regularisers.

What differs between captures of the same shape of problem (weights, target, labels,
BatchNorm targets, mask) is one `member` pytree, an argument of the objective rather than a
constant of it, so that `attacker.groups` can vmap one objective over many captures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from attacker.distances import DISTANCES
from attacker.mixing import input_images, input_labels
from attacker.priors import REGULARISERS, BNRecorder, PriorContext
from attacker.problem import Budget, InversionProblem
from attacker.target import functional_copy


def member_of(problem: InversionProblem) -> dict:
    """The tensors of one problem that its objective reads: weights at the round's start,
    observed update, fixed labels, BatchNorm targets and mask (left out where absent: no
    None leaves to vmap)."""
    member = {"params": {n: p.detach() for n, p in problem.model.named_parameters()},
              "target": problem.target, "labels": problem.labels,
              "bn": problem.bn_targets, "mask": problem.mask}
    return {k: v for k, v in member.items() if v is not None}


def autograd_grad(fn, has_aux: bool = True):
    """`torch.func.grad(fn, has_aux=True)`'s contract on plain autograd: the gradient with
    respect to `params` with `create_graph=True`, so that a backward through it reaches the
    dummy data. The eager one-restart loop uses it: no functorch dispatch per operator, so
    it runs at a plain autograd loop's speed (benchmarks/attack_speed.py). `has_aux` is
    torch.func.grad's argument: `fn` always returns (loss, aux) here."""

    def g(params, *args):
        leaves = {k: v if v.requires_grad else v.detach().requires_grad_(True)
                  for k, v in params.items()}
        loss, aux = fn(leaves, *args)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True,
                                    allow_unused=True, materialize_grads=True)
        return dict(zip(leaves, grads)), aux
    return g


class UpdateSimulator:
    """Maps dummy (x, y) to the update the client would have sent from weights `params`,
    functionally (`torch.func.grad`, or plain autograd with `autograd=True`)."""

    def __init__(self, problem: InversionProblem, autograd: bool = False):
        self.problem = problem
        self.model = functional_copy(problem.model)
        self.grad = autograd_grad if autograd else grad

    def _loss(self, params, x, y):
        recorder = BNRecorder(self.model) if self.problem.bn_targets is not None else None
        try:
            logits = functional_call(self.model, params, (x,))
        finally:
            if recorder is not None:
                recorder.close()
        divisor = self.problem.loss_divisor
        loss = (F.cross_entropy(logits, y) if divisor is None
                else F.cross_entropy(logits, y, reduction="sum") / divisor)
        return loss, (recorder.pop() if recorder is not None else [])

    def __call__(self, params, x, y):
        """Returns (update dict, BatchNorm inputs of the first forward)."""
        p = self.problem
        if p.local_steps == 0:
            return self.grad(self._loss, has_aux=True)(params, x, y)
        # FedAvg replay: the client's optimiser over fixed sequential batches of the dummy
        # data, of the recorded sizes, wrapping around at the end of each pass; an empty
        # (Poisson) batch is a step without gradient (DP-SGD adds only noise to it)
        start_params, n = params, x.shape[0]
        sizes = p.local_batch_sizes or [n] * p.local_steps
        features, start, buf = None, 0, None
        for size in sizes:
            if size == 0 or n == 0:
                g = {k: torch.zeros_like(v) for k, v in params.items()}
                params, buf = p.local_optimizer.step(params, g, p.local_lr, buf)
                continue
            idx = [(start + k) % n for k in range(size)]
            start = (start + size) % n
            sl = slice(idx[0], idx[0] + size) if idx == list(range(idx[0], idx[0] + size)) else idx
            g, feats = self.grad(self._loss, has_aux=True)(params, x[sl], y[sl])
            features = feats if features is None else features
            params, buf = p.local_optimizer.step(params, g, p.local_lr, buf)
        return {n: params[n] - start_params[n] for n in params}, features


def member_objective(problem: InversionProblem, budget: Budget, pixels: bool = False,
                     autograd: bool = False):
    """objective(z, y_logits, member) -> (total, match) for one restart of any problem
    shaped like `problem` (`member_of`), z in the problem's normalised coordinates (the
    image priors see z, as in the released code); with `pixels=True` it takes pixel-space
    images instead. `autograd=True`: inner gradients by plain autograd (`autograd_grad`),
    for the eager loop; not for vmap or tracing."""
    sim = UpdateSimulator(problem, autograd)
    dist = DISTANCES[budget.distance or "cosine"]
    weights = {k: w for k, w in budget.prior_weights().items() if w > 0}
    co = problem.coordinates(next(problem.model.parameters()).device)

    def objective(z, y_logits, member):
        if pixels:
            z, x = (z - co.shift) / co.scale, z
        else:
            x = co.to_pixels(z)
        update, features = sim(member["params"], input_images(problem.mix, x),
                               input_labels(problem.mix, y_logits, member.get("labels")))
        match = dist(update, member["target"], member.get("mask"))
        ctx = PriorContext(z, features, member.get("bn"))
        total = match
        for name, w in weights.items():
            term = REGULARISERS[name](ctx)
            if term is not None:
                total = total + w * term
        return total, match

    return objective


def make_objective(problem: InversionProblem, budget: Budget, pixels: bool = False,
                   autograd: bool = False):
    """objective(z, y_logits) -> (total, match) for one restart of this problem."""
    objective = member_objective(problem, budget, pixels, autograd)
    member = member_of(problem)
    return lambda z, y_logits: objective(z, y_logits, member)
