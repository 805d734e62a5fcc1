"""The public Inverting Gradients code's parametrisation, for comparison only: it optimises
the images in the model's normalised coordinates z = (x - mean) / std, starting from
z ~ N(0, 1), with TV on z and its released defaults (one cosine, TV 0.1, plain Adam at
lr 0.1, step decay, box, eval-free gradient as a client computes it). fedsim optimises in
pixel space; the attack-engine benchmark reports both at equal steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attacker.problem import step_milestones
from attacker.target import functional_copy


def _tv(z):
    return ((z[..., :, 1:] - z[..., :, :-1]).abs().mean()
            + (z[..., 1:, :] - z[..., :-1, :]).abs().mean())


def released_ig(prob, mean, std, iterations: int, seed: int, tv: float = 0.1,
                lr: float = 0.1) -> torch.Tensor:
    """Reconstructed images in [0, 1]."""
    model = functional_copy(prob.model)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    keep = [i for i, n in enumerate(names) if n in prob.target]
    target = [prob.target[names[i]] for i in keep]
    dev = params[0].device
    dm = torch.tensor(mean, device=dev).view(1, -1, 1, 1)
    ds = torch.tensor(std, device=dev).view(1, -1, 1, 1)
    lo, hi = -dm / ds, (1 - dm) / ds
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((prob.batch_size, *prob.image_shape), generator=gen).to(dev)
    z = torch.max(torch.min(z, hi), lo).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, step_milestones(iterations), 0.1)
    t_norm = sum(t.pow(2).sum() for t in target).sqrt()
    for _ in range(iterations):
        opt.zero_grad()
        loss = F.cross_entropy(model(dm + ds * z), prob.labels)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        grads = [grads[i] for i in keep]
        dot = sum((g * t).sum() for g, t in zip(grads, target))
        cost = 1 - dot / (sum(g.pow(2).sum() for g in grads).sqrt() * t_norm)
        (cost + tv * _tv(z)).backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            z.data = torch.max(torch.min(z, hi), lo)
    return (dm + ds * z.detach()).clamp(0, 1)
