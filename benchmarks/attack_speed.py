"""The attack engine's yardstick: time per restart-step of the fast path, in each engine
mode, against the plain autograd reference of Inverting Gradients (attacker/reference.py),
and PSNR at equal steps, all on the benchmark case (benchmarks/cases.py).

    python benchmarks/attack_speed.py [--device auto|cpu|cuda] [--quick]
        [--skip speed quality one_restart]

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
import torch.nn.functional as F

from attacker.adam import invert_adam, prepare
from attacker.problem import Budget
from attacker.reference import invert_reference
from cases import natural32_case, sync, timed_engine
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
    if device.type == "cuda":  # FEDSIM_CUDA_MODES adds inductor (benchmarks/gpu/)
        return os.environ.get("FEDSIM_CUDA_MODES", "eager graph cudagraph").split()
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
    budget = Budget(iterations=steps, restarts=restarts, compile=mode)
    prepare_s, per, (_, _, engine) = timed_engine(lambda: prepare(prob, budget), steps, device)
    return per / restarts, prepare_s, engine


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


ONE_RESTART_CASES = [("lenet", 1), ("lenet", 16), ("resnet18", 4)]
RUN_LENGTHS = (300, 10_000)


def plain_loop(prob, steps: int) -> None:
    """Inverting Gradients as anyone would write it first: autograd.grad with
    create_graph=True, then backward, Adam, clamp (one restart, known labels, cosine +
    TV 0.1, fedsim's default objective). The yardstick the reference must match."""
    model, co = prob.model, prob.coordinates(next(prob.model.parameters()).device)
    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    keep = [i for i, n in enumerate(names) if n in prob.target]
    target = [prob.target[names[i]] for i in keep]
    t_norm = sum(t.pow(2).sum() for t in target).sqrt()
    x = torch.randn(prob.batch_size, *prob.image_shape, device=co.lo.device)
    x = torch.max(torch.min(x, co.hi), co.lo).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(co.shift + co.scale * x), prob.labels)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        grads = [grads[i] for i in keep]
        dot = sum((g * t).sum() for g, t in zip(grads, target))
        dist = 1 - dot / (sum(g.pow(2).sum() for g in grads).sqrt() * t_norm)
        tv = ((x[..., :, 1:] - x[..., :, :-1]).abs().mean()
              + (x[..., 1:, :] - x[..., :-1, :]).abs().mean())
        (dist + 0.1 * tv).backward()
        opt.step()
        with torch.no_grad():
            x.data = torch.max(torch.min(x, co.hi), co.lo)


def _clock(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def one_restart(device, quick: bool, repeats: int = 5) -> list[dict]:
    """One restart, set-up included: the plain loop, the in-repo reference, each mode,
    and `auto` as it resolves at 300 and at 10,000 steps (10,000 extrapolated from the
    measured set-up + steps x measured time per step). Interleaved: each figure is the
    median of `repeats`, and each speed-up the median of the repeats' own ratios, with
    their range (this VM's timings vary by 10-20 % between repeats of the same code)."""
    rows = []
    for model, batch in ONE_RESTART_CASES:
        prob, _, _, _ = natural32_case(model, batch, device)
        # enough steps that a measurement lasts about a second (40 LeNet steps varied by
        # 20 % between two runs of the same code)
        steps = (10 if quick else 200) if model == "lenet" else (2 if quick else 6)
        timings: dict[str, list[tuple[float, float]]] = {}

        def record(name, setup, per):
            timings.setdefault(name, []).append((setup, per))

        plain_loop(prob, 1)  # warm-up: allocator, oneDNN primitives
        invert_reference(prob, Budget(iterations=1), seed=0)
        for _ in range(repeats):
            record("plain", 0.0, _clock(lambda: plain_loop(prob, steps), device) / steps)
            ref = _clock(lambda: invert_reference(prob, Budget(iterations=steps), seed=0),
                         device)
            record("reference", 0.0, ref / steps)
            for mode in ["eager", "graph"]:
                per, prep, _ = time_fast(prob, 1, steps, mode, device)
                record(mode, prep, per)
            for n in RUN_LENGTHS:
                t = time.perf_counter()
                it, _, engine = prepare(prob, Budget(iterations=n))
                sync(device)
                prep = time.perf_counter() - t
                per = _clock(lambda: [it() for _ in range(steps)], device) / steps
                record(f"auto_{n}", prep, per)
                timings.setdefault(f"auto_{n}_engine", []).append(engine)
        row = {"model": model, "batch": batch, "steps_timed": steps, "repeats": repeats}
        for name, values in timings.items():
            if name.endswith("_engine"):
                row[name] = values
                continue
            setup, per = sorted(values, key=lambda v: v[0] + v[1] * 10_000)[len(values) // 2]
            row[f"{name}_ms_per_step"], row[f"{name}_setup_s"] = 1e3 * per, setup
            for n in RUN_LENGTHS:
                row[f"{name}_total_s_{n}"] = setup + n * per
        for n in RUN_LENGTHS:
            for other in ("auto", "reference"):
                ratios = sorted((p[1] * n) / (a[0] + a[1] * n) for p, a in
                                zip(timings["plain"], timings[f"{other}_{n}" if other == "auto"
                                                              else other]))
                row[f"{other}_vs_plain_{n}"] = ratios[len(ratios) // 2]
                row[f"{other}_vs_plain_{n}_range"] = [ratios[0], ratios[-1]]
        rows.append(row)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()},
              flush=True)
    return rows


def one_restart_table(rows: list[dict]) -> str:
    lines = ["| case | plain loop ms/step | reference | eager | graph | auto@300 (engine) | "
             "auto@10k (engine) | auto/plain at 300 (range) | auto/plain at 10k, "
             "extrapolated (range) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} b{r['batch']} | {r['plain_ms_per_step']:.1f} | "
            f"{r['reference_ms_per_step']:.1f} | {r['eager_ms_per_step']:.1f} | "
            f"{r['graph_ms_per_step']:.1f} | {r['auto_300_ms_per_step']:.1f} "
            f"({r['auto_300_engine'][-1]}) | {r['auto_10000_ms_per_step']:.1f} "
            f"({r['auto_10000_engine'][-1]}, set-up {r['auto_10000_setup_s']:.1f} s) | "
            f"{r['auto_vs_plain_300']:.2f}x ({_range(r['auto_vs_plain_300_range'])}) | "
            f"{r['auto_vs_plain_10000']:.2f}x ({_range(r['auto_vs_plain_10000_range'])}) |")
    return "\n".join(lines) + "\n"


def _range(pair) -> str:
    return f"{pair[0]:.2f}-{pair[1]:.2f}"


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
    ap.add_argument("--skip", nargs="*", default=[], choices=["speed", "quality", "one_restart"])
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
        result.update({k: old[k] for k in ("speed", "quality", "one_restart")
                       if k in args.skip and k in old})
    if "one_restart" not in args.skip:
        result["one_restart"] = one_restart(device, args.quick)
        result["load_avg_1min"] = os.getloadavg()[0]
        (RESULTS / f"{name}_one_restart.md").write_text(
            f"# One restart, set-up included ({result['device']}, {result['threads']} "
            f"threads, load average {result['load_avg_1min']:.1f})\n\n"
            "Speed-ups are plain loop time / fedsim time for the whole run, the median of "
            f"{result['one_restart'][0]['repeats']} interleaved repeats (range in brackets); "
            "the 10,000-step figures are extrapolated from the measured set-up and time per "
            "step.\n\n"
            + one_restart_table(result["one_restart"]))
    if "speed" not in args.skip:
        result["speed"] = speed(device, args.quick, args.all_modes)
    if "quality" not in args.skip:
        result["quality"] = quality(device, args.quick)
    write_result(name, result)


if __name__ == "__main__":
    main()
