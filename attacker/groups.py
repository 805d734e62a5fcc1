"""Grouped attacks: captures that pose the same shape of problem solved in one optimisation.

Captures of the same architecture, parameter shapes, batch size, knowledge and local
schedule differ only in tensors (weights at the round's start, observed update, labels,
BatchNorm targets, mask). Those are stacked into one `member` pytree and the objective
(`attacker.objective.member_objective`) is vmapped over it, as the engine vmaps restarts,
so one step of G members is one call. Adam is elementwise and each member starts from its
own seed's guess, so every member takes the steps it would take alone (to float rounding:
tests/test_groups.py). A group that runs out of memory is split in two and retried.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import torch
from torch.utils._pytree import tree_map

from attacker.adam import engine_for, iterate
from attacker.objective import member_objective, member_of
from attacker.problem import Budget, InversionProblem, InversionResult, finish, initial_guess

log = logging.getLogger("fedsim")


def _shapes(tree) -> object:
    if tree is None:
        return None
    if torch.is_tensor(tree):
        return (tuple(tree.shape), str(tree.dtype), str(tree.device))
    if isinstance(tree, dict):
        return tuple((k, _shapes(v)) for k, v in sorted(tree.items()))
    return tuple(_shapes(v) for v in tree)


def shape_key(problem: InversionProblem) -> tuple:
    """Problems with equal keys can be solved as one group: everything but the member
    tensors' values is equal (architecture, shapes, batch, label and prior settings, local
    schedule, pixel box and normalisation)."""
    p = problem
    return (type(p.model).__qualname__, repr(p.model), _shapes(member_of(p)), p.batch_size,
            tuple(p.image_shape), p.num_classes, p.local_steps, p.local_lr,
            tuple(p.local_batch_sizes or ()), repr(p.local_optimizer), p.loss_divisor,
            tuple(p.box), p.input_mean, p.input_std, p.mix)


def stack_members(problems: list[InversionProblem]) -> dict:
    return tree_map(lambda *xs: torch.stack(xs), *[member_of(p) for p in problems])


def invert_group(problems: list[InversionProblem], budget: Budget, seeds: list[int],
                 progress: Optional[Callable[[int, float], None]] = None
                 ) -> list[InversionResult]:
    """Each problem's Adam inversion (`attacker.adam.invert_adam`) from its own seed, all
    in one vmapped optimisation; `progress(step, best loss of the group)`."""
    if not problems:
        return []
    keys = {shape_key(p) for p in problems}
    if len(keys) > 1:
        raise ValueError(f"a group holds problems of {len(keys)} shapes; group them with "
                         "attacker.groups.shape_key first")
    t0 = time.perf_counter()
    first = problems[0]
    device = next(first.model.parameters()).device
    starts = [initial_guess(p, budget, torch.Generator().manual_seed(s), device)
              for p, s in zip(problems, seeds)]
    x0 = torch.stack([x for x, _ in starts])
    y0 = torch.stack([y for _, y in starts])
    members = stack_members(problems)
    it, step, engine = engine_for(first, budget, member_objective(first, budget), x0, y0,
                                  members)
    histories: list[list[float]] = [[] for _ in problems]

    def report(i, match):
        best = match.flatten(1).min(1).values.tolist()
        for h, v in zip(histories, best):
            h.append(v)
        if progress is not None:
            progress(i, min(best))

    iterate(it, budget, report)
    with torch.no_grad():
        _, (_, match) = step(it.x.detach(), it.y.detach())
    seconds = time.perf_counter() - t0
    return [finish(p, it.x[g], it.y[g], match[g].tolist(), budget.iterations, seconds,
                   histories[g], f"{engine}+group{len(problems)}")
            for g, p in enumerate(problems)]


MAX_DEFAULT_GROUP = 64


NORMS = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)
CPU_GROUP_MAX_PARAMS = 100_000


def groups_pay_on_cpu(model: torch.nn.Module) -> bool:
    """Whether grouping is expected to beat one attack at a time on a CPU: a rule from
    `benchmarks/attack_throughput.py` on 2 threads, where it paid for the LeNet (no
    normalisation, 8-16k parameters: 1.9-7.6x at 16) and lost for the GroupNorm ConvNet
    (26k parameters: 0.82x at 16) and ResNet-18 (0.35x at 4): vmapping normalised
    convolutions over per-member weights is slow there."""
    small = sum(p.numel() for p in model.parameters()) < CPU_GROUP_MAX_PARAMS
    return small and not any(isinstance(m, NORMS) for m in model.modules())


def default_group_size(problem: InversionProblem, budget: Budget) -> int:
    """As many members as fit a quarter of the free memory (CUDA's free memory, or the
    CPU's available memory from /proc/meminfo), at most MAX_DEFAULT_GROUP: an estimate,
    per member, of 8 copies of the weights (weights, target, gradient, double backward)
    and 64 activation-sized copies of the dummy batch per restart; an overestimate ends in
    a smaller group, an underestimate in a split and retry (`invert_split`). On a CPU,
    one at a time where grouping is not expected to pay (`groups_pay_on_cpu`)."""
    device = next(problem.model.parameters()).device
    if device.type != "cuda" and not groups_pay_on_cpu(problem.model):
        return 1
    n_params = sum(p.numel() for p in problem.model.parameters())
    pixels = budget.restarts * problem.dummies * int(torch.tensor(problem.image_shape).prod())
    per_member = 4 * (8 * n_params + 64 * pixels)
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _available_cpu_bytes()
    return max(1, min(MAX_DEFAULT_GROUP, int(free // 4 // per_member)))


def _available_cpu_bytes() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 ** 31  # unknown: assume 2 GiB


def out_of_memory(err: BaseException) -> bool:
    """A CUDA or CPU allocation failure (torch raises both as RuntimeError kinds)."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and ("can't allocate memory" in str(err)
                                              or "out of memory" in str(err))


def invert_split(solve: Callable[[list], list], items: list) -> list:
    """solve(items) -> one result per item; a group that runs out of memory is split in
    two halves and each retried (logged), down to single items, so none is lost."""
    try:
        return solve(items)
    except Exception as err:  # noqa: BLE001 - only allocation failures are retried
        if not out_of_memory(err) or len(items) == 1:
            raise
        half = len(items) // 2
        log.warning("a group of %d attacks ran out of memory (%s); split into %d + %d and "
                    "retried", len(items), str(err).splitlines()[0][:200], half,
                    len(items) - half)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return invert_split(solve, items[:half]) + invert_split(solve, items[half:])
