"""Attacks per hour, one at a time against grouped (attacker.groups), per case.

    python benchmarks/attack_throughput.py [--device auto|cpu|cuda] [--steps N]
        [--sizes 1 4 16 64] [--cases lenet-digits-1 ...]

For each case, G copies of the benchmark problem (benchmarks/cases.py; each its own seed,
so its own start) are solved one after another with `invert_adam` and together with
`invert_group`. Time per step is measured over `--steps` steps after an untimed warm-up of
each shape (tracing, compiling), in the same process, interleaved; attacks per hour at the
paper's 10,000 steps are extrapolated from the measured per-step time plus the measured
set-up, and the result says so. Writes benchmarks/results/attack_throughput[_cuda].json and
a .md table beside it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from attacker.adam import engine_for, invert_adam, prepare
from attacker.groups import invert_group, stack_members
from attacker.objective import member_objective
from attacker.problem import Budget, initial_guess
from cases import natural32_case, timed_engine
from fedsim.device import resolve_device
from results_io import write_result

CASES = {"lenet-digits-1": ("lenet", 1, "digits"), "lenet-digits-8": ("lenet", 8, "digits"),
         "lenet-natural32-1": ("lenet", 1, "natural32"),
         "lenet-natural32-8": ("lenet", 8, "natural32"),
         "convnet_gn-natural32-8": ("convnet_gn", 8, "natural32"),
         "resnet18-natural32-1": ("resnet18", 1, "natural32"),
         "resnet18-natural32-4": ("resnet18", 4, "natural32")}
PAPER_STEPS = 10_000


def solo_engine(prob, budget):
    return lambda: prepare(prob, budget, seed=0)


def group_engine(prob, budget, size: int):
    def build():
        device = next(prob.model.parameters()).device
        starts = [initial_guess(prob, budget, torch.Generator().manual_seed(s), device)
                  for s in range(size)]
        x0 = torch.stack([x for x, _ in starts])
        y0 = torch.stack([y for _, y in starts])
        return engine_for(prob, budget, member_objective(prob, budget), x0, y0,
                          stack_members([prob] * size))
    return build


def case_rows(name: str, device, steps: int, sizes: list[int], compile_mode: str) -> list[dict]:
    model, batch, data = CASES[name]
    prob, _, _, _ = natural32_case(model, batch, device, data=data)
    budget = Budget(iterations=PAPER_STEPS, compile=compile_mode)
    # one check that the grouped path is the real thing: a 2-member group of 3 steps
    # returns each member's own result
    check = invert_group([prob, prob], budget.model_copy(update={"iterations": 3}), [0, 1])
    alone = invert_adam(prob, budget.model_copy(update={"iterations": 3}), seed=1)
    assert abs(check[1].match_loss - alone.match_loss) < 1e-3 * max(alone.match_loss, 1e-3)
    solo_setup, solo_step, _ = timed_engine(solo_engine(prob, budget), steps, device, 2)
    solo_attack_s = solo_setup + PAPER_STEPS * solo_step
    rows = []
    for size in sizes:
        setup, per, _ = timed_engine(group_engine(prob, budget, size), steps, device, 2)
        group_s = setup + PAPER_STEPS * per
        row = {"case": name, "model": model, "batch": batch, "data": data,
               "group_size": size, "steps_timed": steps,
               "solo_ms_per_step": 1e3 * solo_step, "solo_setup_s": solo_setup,
               "group_ms_per_step": 1e3 * per, "group_setup_s": setup,
               "solo_attacks_per_hour": 3600 / solo_attack_s,
               "grouped_attacks_per_hour": 3600 * size / group_s,
               "speedup": solo_attack_s * size / group_s}
        rows.append(row)
        print(f"{name:24s} G={size:3d} solo {1e3 * solo_step:8.2f} ms/step  group "
              f"{1e3 * per:9.2f} ms/step  x{row['speedup']:.2f}", flush=True)
    return rows


def markdown(result: dict) -> str:
    lines = [f"# Attack throughput ({result['device']}, {result['threads']} threads, torch "
             f"{result['torch']})", "",
             f"Attacks per hour at {PAPER_STEPS:,} steps, extrapolated from "
             "the measured time per step (over `steps_timed` steps) plus the measured "
             "set-up; one restart; `python benchmarks/attack_throughput.py "
             f"{result['argv']}`.", "",
             "| case | group | solo ms/step | group ms/step | solo attacks/h | "
             "grouped attacks/h | speed-up |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['group_size']} | {r['solo_ms_per_step']:.2f} | "
                     f"{r['group_ms_per_step']:.2f} | {r['solo_attacks_per_hour']:.1f} | "
                     f"{r['grouped_attacks_per_hour']:.1f} | {r['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per engine")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--compile", default="auto", help="attack.compile for both paths")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("FEDSIM_BENCH_THREADS", "2")))
    rows = []
    for name in args.cases:  # written after every case: an interrupted run keeps its cases
        rows += case_rows(name, device, args.steps, args.sizes, args.compile)
        write(device, args, rows)


def write(device, args, rows) -> None:
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "argv": " ".join(os.sys.argv[1:]), "load_avg_1min": os.getloadavg()[0],
              "note": f"attacks/hour extrapolated to {PAPER_STEPS} steps from measured "
                      "per-step time and set-up", "rows": rows}
    name = "attack_throughput" + ("_cuda" if device.type == "cuda" else "")
    path = write_result(name, result)
    Path(path).with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
