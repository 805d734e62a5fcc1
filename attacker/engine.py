"""How the steps of an Adam inversion run on a device, fastest first where it is safe.

One attack step is a forward, a backward and a double backward, then an Adam update and a
clamp into the pixel box. At the image sizes of the field the arithmetic is small, so the
time goes to Python and to launching kernels; each mode removes more of that:

- `eager`: `torch.func.grad_and_value` of the objective, vmapped over restarts or looped.
- `graph`: that step traced once by `make_fx` into one aten graph (forward, backward and
  double backward as explicit ops): no module hooks, no autograd tape at run time.
- `inductor`: the traced step compiled by `torch.compile` (fused C++ or Triton kernels).
  Compiling costs seconds (about 10-25 s for the LeNet, a minute for ResNet-18 on 2 CPU
  threads) and pays back over long runs.
- `cudagraph` (CUDA only): the traced step, Adam (`capturable=True`, tensor learning rate)
  and the clamp captured as one CUDA graph and replayed every iteration; the loss is read
  only when asked.

`auto` picks `cudagraph` on CUDA; on a CPU, `inductor` for small models over long runs
(where its compile time is a small part of the run) and `graph` otherwise. All modes take
the same steps from the same start (tests/test_engine.py checks them against the plain
autograd reference in `attacker.reference`). Measured per mode: benchmarks/attack_speed.py.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch.func import grad_and_value, vmap
from torch.fx.experimental.proxy_tensor import make_fx

log = logging.getLogger("fedsim")

MODES = ("auto", "eager", "graph", "inductor", "cudagraph")

# Measured on 2 CPU threads: inductor runs the LeNet step about 2x faster than the traced
# graph after a 10-25 s compile, ResNet-18 1.1x after about 70 s. "auto" compiles small
# models when the run is long enough to pay the compile back several times.
AUTO_INDUCTOR_MAX_PARAMS = 1_000_000
AUTO_INDUCTOR_MIN_ITERATIONS = 2_000

# Measured on 2 CPU threads (benchmarks/attack_speed.py): vmapped restarts run the LeNet
# faster than one restart after another, but not ResNet-18 (large convolutions gain
# nothing from vmap on a CPU). "auto" batches on CUDA or for small models.
AUTO_BATCH_MAX_PARAMS = 1_000_000


def resolve_mode(mode: str, device, n_params: int = 0, iterations: int = 0) -> str:
    if mode not in MODES:
        raise ValueError(f"attack.compile {mode!r} is not one of {list(MODES)}")
    cuda = torch.device(device).type == "cuda"
    if mode == "auto":
        if cuda:
            return "cudagraph"
        small, long = n_params <= AUTO_INDUCTOR_MAX_PARAMS, iterations >= AUTO_INDUCTOR_MIN_ITERATIONS
        return "inductor" if small and long else "graph"
    if mode == "cudagraph" and not cuda:
        raise ValueError("attack.compile 'cudagraph' needs a CUDA device")
    return mode


def batch_restarts(setting: str, n_params: int, device, restarts: int) -> bool:
    """vmap the restarts? Never worth it for one restart."""
    if setting != "auto":
        return setting == "on"
    if restarts == 1:
        return False
    return torch.device(device).type == "cuda" or n_params <= AUTO_BATCH_MAX_PARAMS


StepFn = Callable[[torch.Tensor, torch.Tensor], tuple]


def build_step(objective, x: torch.Tensor, y: torch.Tensor, *, batched: bool,
               mode: str) -> tuple[StepFn, str]:
    """(step, mode that runs it): step(x, y) -> ((grad_x, grad_y), (total, match)) for all
    restarts (leading dim). An inductor compile that fails (no C++ compiler, say) is said in
    one warning and the traced graph runs instead."""
    step = grad_and_value(objective, argnums=(0, 1), has_aux=True)
    if batched:
        step = vmap(step)
    else:
        x, y = x[0], y[0]
    if mode != "eager":
        step = make_fx(step)(x, y)
    if mode == "inductor":
        compiled = torch.compile(step, dynamic=False)
        try:
            compiled(x, y)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back the same way
            log.warning("attack.compile 'inductor' failed (%s: %s); running the traced graph",
                        type(err).__name__, str(err).splitlines()[0] if str(err) else "")
            mode = "graph"
        else:
            step = compiled
    return (step if batched else _looped(step)), mode


def _looped(one):
    """The same step as vmap(one), one restart after another, results stacked."""
    def step(xs, ys):
        outs = [one(x, y) for x, y in zip(xs, ys)]
        gx = torch.stack([o[0][0] for o in outs])
        gy = torch.stack([o[0][1] for o in outs])
        return (gx, gy), (torch.stack([o[1][0] for o in outs]),
                          torch.stack([o[1][1] for o in outs]))
    return step
