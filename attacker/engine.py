"""How the steps of an Adam inversion run on a device, fastest first where it is safe.

One attack step is a forward, a backward and a double backward, then an Adam update and a
clamp into the pixel box. At the image sizes of the field the arithmetic is small, so the
time goes to Python and to launching kernels; each mode removes more of that:

- `eager`: one restart after another, a plain autograd loop (`torch.autograd.grad` with
  `create_graph=True`, then a backward to the dummies): no functorch dispatch per
  operator, so it runs at the speed of the loop anyone would write. Vmapped restarts or a
  group of captures take `torch.func.grad_and_value` of the objective instead.
- `graph`: that step traced once by `make_fx` into one aten graph (forward, backward and
  double backward as explicit ops): no module hooks, no autograd tape at run time.
- `inductor`: the traced step compiled by `torch.compile` (fused C++ or Triton kernels).
  Compiling costs seconds (about 10-25 s for the LeNet, a minute for ResNet-18 on 2 CPU
  threads) and pays back over long runs.
- `cudagraph` (CUDA only): the traced step, Adam (`capturable=True`, tensor learning rate)
  and the clamp captured as one CUDA graph and replayed every iteration; the loss is read
  only when asked.

`auto` picks `cudagraph` on CUDA. On a CPU the fastest mode depends on the case (measured
in benchmarks/attack_speed.py: the traced graph wins for the LeNet at batch 1, eager for
larger batches and ResNet-18), so a
run long enough to repay it times a few steps of each candidate at start-up and keeps the
one with the least set-up + steps x time per step; a short run follows a rule from those
measurements. All modes take
the same steps from the same start (tests/test_engine.py checks them against the plain
autograd reference in `attacker.reference`). Measured per mode: benchmarks/attack_speed.py.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch
from torch.func import grad_and_value, vmap
from torch.fx.experimental.proxy_tensor import make_fx

log = logging.getLogger("fedsim")

MODES = ("auto", "eager", "graph", "inductor", "cudagraph")

# "auto" on a CPU: runs of at least this many steps time the candidates at start-up
# (a few steps each, some seconds at most), shorter ones follow the rule below.
AUTO_PROBE_MIN_ITERATIONS = 1_000
AUTO_PROBE_TRIALS = 3
# The short-run rule (benchmarks/attack_speed.py, 2 CPU threads): one restart of one
# capture runs the plain autograd loop (`eager`), at the speed of the loop anyone would
# write and with no set-up; vmapped restarts or a group run the traced graph where it is
# small (the LeNet, a few examples at once), eager otherwise (ResNet-18, large batches).
# Inductor compiles for 10-25 s (LeNet) to a minute (ResNet-18), so it is a candidate
# only for small models over runs long enough that its compile can pay back.
AUTO_GRAPH_MAX_EXAMPLES = 4          # batch x group members x restarts stepped at once
AUTO_GRAPH_MAX_PARAMS = 1_000_000
AUTO_INDUCTOR_MAX_PARAMS = 1_000_000
AUTO_INDUCTOR_MIN_ITERATIONS = 2_000

# Measured on 2 CPU threads (benchmarks/attack_speed.py): vmapped restarts run the LeNet
# faster than one restart after another, but not ResNet-18 (large convolutions gain
# nothing from vmap on a CPU). "auto" batches on CUDA or for small models.
AUTO_BATCH_MAX_PARAMS = 1_000_000


def resolve_mode(mode: str, device, n_params: int = 0, iterations: int = 0, batch: int = 1,
                 vmapped: bool = False) -> str:
    """The mode to run, or "probe" (CPU, auto, a long run): time `cpu_candidates` at
    start-up (`fastest_step`). `batch` counts every example stepped at once; `vmapped`:
    restarts or a group's members are stepped in one vmapped call."""
    if mode not in MODES:
        raise ValueError(f"attack.compile {mode!r} is not one of {list(MODES)}")
    cuda = torch.device(device).type == "cuda"
    if mode == "auto":
        if cuda:
            return "cudagraph"
        if iterations >= AUTO_PROBE_MIN_ITERATIONS:
            return "probe"
        if not vmapped:
            return "eager"
        small = n_params <= AUTO_GRAPH_MAX_PARAMS and batch <= AUTO_GRAPH_MAX_EXAMPLES
        return "graph" if small else "eager"
    if mode == "cudagraph" and not cuda:
        raise ValueError("attack.compile 'cudagraph' needs a CUDA device")
    return mode


def cpu_candidates(n_params: int, iterations: int) -> list[str]:
    small_long = (n_params <= AUTO_INDUCTOR_MAX_PARAMS
                  and iterations >= AUTO_INDUCTOR_MIN_ITERATIONS)
    return ["eager", "graph"] + (["inductor"] if small_long else [])


def batch_restarts(setting: str, n_params: int, device, restarts: int) -> bool:
    """vmap the restarts? Never worth it for one restart."""
    if setting != "auto":
        return setting == "on"
    if restarts == 1:
        return False
    return torch.device(device).type == "cuda" or n_params <= AUTO_BATCH_MAX_PARAMS


StepFn = Callable[[torch.Tensor, torch.Tensor], tuple]


def build_step(objective, x: torch.Tensor, y: torch.Tensor, *, batched: bool,
               mode: str, members=None, plain=None) -> tuple[StepFn, str]:
    """(step, mode that runs it): step(x, y) -> ((grad_x, grad_y), (total, match)) for all
    restarts (leading dim). With `members` (a pytree stacked over a group of captures,
    `attacker.groups`) the objective takes it as a third argument and everything has a
    leading member dim before the restart dim; the members are vmapped, the restarts as
    without. An inductor compile that fails (no C++ compiler, say) is said in one warning
    and the traced graph runs instead. `plain()` builds the same objective with
    plain-autograd inner gradients (`attacker.objective.autograd_grad`), which `eager` runs
    one restart after another where nothing is vmapped: only then, as it copies the model."""
    grouped = members is not None
    if mode == "eager" and not batched and not grouped and plain is not None:
        return _looped(_autograd_step(plain())), mode
    step = grad_and_value(objective, argnums=(0, 1), has_aux=True)
    if batched:
        step = vmap(step, in_dims=(0, 0, None) if grouped else 0)
    if grouped:
        step = vmap(step, in_dims=(0, 0, 0))
    if not batched:
        x, y = (x[:, 0], y[:, 0]) if grouped else (x[0], y[0])
    args = (x, y, members) if grouped else (x, y)
    if mode != "eager":
        step = make_fx(step)(*args)
    if mode == "inductor":
        compiled = torch.compile(step, dynamic=False)
        try:
            compiled(*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back the same way
            log.warning("attack.compile 'inductor' failed (%s: %s); running the traced graph",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            mode = "graph"
        else:
            step = compiled
    if grouped:
        step = _bound(step, members)
    return (step if batched else _looped(step, dim=1 if grouped else 0)), mode


def _autograd_step(objective) -> StepFn:
    """grad_and_value(objective, argnums=(0, 1), has_aux=True) on plain autograd; unused
    label logits (fixed labels) get a zero gradient, as torch.func gives them."""
    def step(x, y):
        with torch.enable_grad():
            x, y = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
            total, match = objective(x, y)
            gx, gy = torch.autograd.grad(total, (x, y), allow_unused=True,
                                         materialize_grads=True)
        return (gx, gy), (total.detach(), match.detach())
    return step


def _bound(step, members):
    return lambda x, y: step(x, y, members)


def _looped(one, dim: int = 0):
    """The same step as vmap(one) over `dim` (the restarts), one restart after another,
    results stacked."""
    def step(xs, ys):
        outs = [one(x, y) for x, y in zip(xs.unbind(dim), ys.unbind(dim))]
        gx = torch.stack([o[0][0] for o in outs], dim)
        gy = torch.stack([o[0][1] for o in outs], dim)
        return (gx, gy), (torch.stack([o[1][0] for o in outs], dim),
                          torch.stack([o[1][1] for o in outs], dim))
    return step


def fastest_step(objective, x, y, *, batched: bool, candidates: list[str], iterations: int,
                 members=None, plain=None) -> tuple[StepFn, str]:
    """Build each candidate, time its first call (set-up) and AUTO_PROBE_TRIALS more, and
    keep the one with the least set-up + iterations x time per step. The modes take the
    same steps to float rounding, so the pick changes the speed, not the attack."""
    best = None
    for mode in candidates:
        t = time.perf_counter()
        step, got = build_step(objective, x, y, batched=batched, mode=mode, members=members,
                               plain=plain)
        step(x, y)
        setup = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(AUTO_PROBE_TRIALS):
            step(x, y)
        per = (time.perf_counter() - t) / AUTO_PROBE_TRIALS
        cost = setup + per * iterations
        log.debug("attack.compile auto: %s set-up %.2f s, %.2f ms/step", got, setup, 1e3 * per)
        if best is None or cost < best[0]:
            best = (cost, step, got)
    return best[1], best[2]
