"""How the Inverting Gradients defaults were chosen: PSNR at equal steps on the benchmark
case (benchmarks/cases.py) over a small grid of the settings the published methods differ
in: TV weight, learning rate (pixel units), signed or plain gradient; plus fedsim's old
default (per-layer cosines, TV 1e-4, signed) and the public code's parametrisation
(released_ig.py) for comparison.

    python benchmarks/attack_defaults.py [--device auto] [--models lenet resnet18]

Writes benchmarks/results/attack_defaults_<device>.json; mean of 3 seeds per setting.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from attacker.adam import invert_adam
from attacker.problem import Budget
from cases import natural32_case
from fedsim.device import resolve_device
from fedsim.metrics import score_reconstruction
from released_ig import released_ig
from results_io import write_result

STEPS = {("lenet", 1): 1000, ("lenet", 4): 1000, ("resnet18", 1): 500}
OLD_DEFAULT = dict(distance="layer_cosine", tv_weight=1e-4, signed=True)


def grid(signs, old=True):
    if old:
        yield "old default", OLD_DEFAULT
    for tv, lr, signed in itertools.product((0.1, 0.3), (0.1, 0.03), signs):
        yield f"tv {tv} lr {lr}{' signed' if signed else ''}", dict(tv_weight=tv, lr=lr,
                                                                    signed=signed)


def psnr_of(prob, x, y, budget, seed, norm=None):
    if norm is not None:
        images = released_ig(prob, *norm, budget.iterations, seed)
    else:
        images = invert_adam(prob, budget, seed=seed).images
    return score_reconstruction(x, images.to(x.device), y, y)["psnr"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", nargs="+", default=["lenet", "resnet18"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--plain-only", action="store_true", help="skip the signed-gradient half")
    ap.add_argument("--skip-old", action="store_true", help="skip fedsim's old default")
    ap.add_argument("--skip-released", action="store_true",
                    help="skip the public code's parametrisation (attack_speed.py has it)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    rows = []
    for (model, batch), steps in STEPS.items():
        if model not in args.models:
            continue
        prob, x, y, norm = natural32_case(model, batch, device)
        settings = list(grid((False,) if args.plain_only else (False, True), not args.skip_old))
        if not args.skip_released:
            settings.append(("released code's parametrisation", None))
        for name, kw in settings:
            t = time.perf_counter()
            budget = Budget(iterations=steps, **(kw or {}))
            ps = [psnr_of(prob, x, y, budget, s, norm=None if kw else norm)
                  for s in range(args.seeds)]
            rows.append({"model": model, "batch": batch, "steps": steps, "setting": name,
                         "psnr": ps, "mean_psnr": sum(ps) / len(ps),
                         "seconds": time.perf_counter() - t})
            print(f"{model} b{batch} {steps} steps  {name:28s} {rows[-1]['mean_psnr']:.2f} dB",
                  flush=True)
    write_result(f"attack_defaults_{torch.device(device).type}",
                 {"device": str(device), "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
