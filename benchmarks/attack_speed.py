"""The attack engine's yardstick: time per restart-step of the fast path, in each engine
mode, against the plain autograd reference of Inverting Gradients (attacker/reference.py),
and PSNR at equal steps, all on the benchmark case (benchmarks/cases.py).

    python benchmarks/attack_speed.py [--device auto|cpu|cuda] [--quick]

Writes benchmarks/results/attack_speed_<cpu|cuda>.json. Each timing follows one untimed
warm-up per shape (tracing, compiling, graph capture, cuDNN autotuning, excluded and
reported apart as `prepare_s`), reads the clock only after a device sync, and is taken in
the same process as its reference, case by case.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from attacker.adam import invert_adam, prepare
from attacker.problem import Budget
from attacker.reference import invert_reference
from cases import natural32_case, sync
from fedsim.device import resolve_device
from fedsim.metrics import score_reconstruction
from released_ig import released_ig
from results_io import write_result

SPEED_CASES = [("lenet", 1), ("lenet", 16), ("resnet18", 1), ("resnet18", 4),
               ("resnet18", 16)]
QUALITY_CASES = {"cpu": [("lenet", 1, 300), ("lenet", 4, 300), ("lenet", 1, 1000),
                         ("lenet", 4, 1000)],
                 "cuda": [("lenet", 1, 1000), ("lenet", 4, 1000), ("resnet18", 1, 500)]}
RESULTS = Path(__file__).parent / "results"
OLD_DEFAULT = dict(distance="layer_cosine", tv_weight=1e-4, signed=True)


def modes_for(device, model, all_modes: bool) -> list[str]:
    if device.type == "cuda":
        return ["eager", "graph", "cudagraph"]
    # inductor on ResNet-18 compiles for about a minute per shape on 2 threads
    return ["eager", "graph"] + (["inductor"] if model == "lenet" or all_modes else [])


def time_reference(prob, restarts, steps, device) -> float:
    invert_reference(prob, Budget(iterations=1), seed=0)  # warm-up
    sync(device)
    t = time.perf_counter()
    invert_reference(prob, Budget(iterations=steps, restarts=restarts), seed=0)
    sync(device)
    return (time.perf_counter() - t) / (steps * restarts)


def time_fast(prob, restarts, steps, mode, device) -> tuple[float, float, str]:
    t = time.perf_counter()
    it, _, engine = prepare(prob, Budget(iterations=steps, restarts=restarts, compile=mode))
    for _ in range(3):
        it()
    sync(device)
    prepare_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        it()
    sync(device)
    return (time.perf_counter() - t) / (steps * restarts), prepare_s, engine


def speed(device, quick: bool, all_modes: bool) -> list[dict]:
    rows = []
    for model, batch in SPEED_CASES:
        prob, _, _, _ = natural32_case(model, batch, device)
        if device.type == "cuda":
            steps = 30 if quick else (100 if model == "lenet" else 30)
        else:
            steps = (20 if quick else 100) if model == "lenet" else (2 if quick else 3)
        for restarts in (1, 4):
            ref = time_reference(prob, restarts, steps, device)
            row = {"model": model, "batch": batch, "restarts": restarts, "steps": steps,
                   "reference_ms": 1e3 * ref}
            for mode in modes_for(device, model, all_modes):
                try:
                    per, prep, engine = time_fast(prob, restarts, steps, mode, device)
                except Exception as err:  # noqa: BLE001 - record it, time the other modes
                    row[f"{mode}_error"] = repr(err)[:300]
                    continue
                row[f"{mode}_ms"] = 1e3 * per
                row[f"{mode}_speedup"] = ref / per
                row[f"{mode}_prepare_s"] = prep
                row[f"{mode}_engine"] = engine
            rows.append(row)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()},
                  flush=True)
    return rows


def quality(device, quick: bool) -> list[dict]:
    """Mean PSNR of 3 seeds at equal steps: fedsim's default; the in-repo reference (the
    same method as a plain loop, so it should agree; CPU only, to keep a GPU run short);
    the public code's parametrisation (released_ig.py); and fedsim's old default."""
    rows = []
    for model, batch, steps in QUALITY_CASES[device.type]:
        if quick:
            steps = min(steps, 100)
        prob, x, y, (mean, std) = natural32_case(model, batch, device)

        def fast(seed, **kw):
            try:
                return invert_adam(prob, Budget(iterations=steps, **kw), seed=seed).images
            except Exception as err:  # noqa: BLE001 - say it, then use the traced graph
                print(f"auto engine failed ({err!r}); rerunning with compile='graph'")
                return invert_adam(prob, Budget(iterations=steps, compile="graph", **kw),
                                   seed=seed).images

        runs = [("fedsim default", fast),
                ("in-repo reference", lambda seed: invert_reference(
                    prob, Budget(iterations=steps), seed=seed).images),
                ("released code's parametrisation",
                 lambda seed: released_ig(prob, mean, std, steps, seed)),
                ("fedsim old default", lambda seed: fast(seed, **OLD_DEFAULT))]
        if device.type == "cuda":
            runs.pop(1)
        for name, run in runs:
            t, ps = time.perf_counter(), []
            for seed in range(3):
                images = run(seed).to(x.device)
                ps.append(score_reconstruction(x, images, y, y)["psnr"])
            rows.append({"model": model, "batch": batch, "steps": steps, "attack": name,
                         "psnr": ps, "mean_psnr": sum(ps) / 3,
                         "seconds": time.perf_counter() - t})
            print(f"{model} b{batch} {steps} steps {name:32s} {sum(ps) / 3:.2f} dB", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="few steps: a smoke run")
    ap.add_argument("--all-modes", action="store_true",
                    help="also time inductor on ResNet-18 on a CPU (slow to compile)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["speed", "quality"])
    args = ap.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("FEDSIM_BENCH_THREADS", "2")))
    name = f"attack_speed_{device.type}" + ("_quick" if args.quick else "")
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    earlier = RESULTS / f"{name}.json"
    if earlier.is_file():  # a skipped section keeps its earlier figures
        old = json.loads(earlier.read_text())
        result.update({k: old[k] for k in ("speed", "quality") if k in args.skip and k in old})
    if "speed" not in args.skip:
        result["speed"] = speed(device, args.quick, args.all_modes)
    if "quality" not in args.skip:
        result["quality"] = quality(device, args.quick)
    write_result(name, result)


if __name__ == "__main__":
    main()
