"""The attacker's own search against the fixed default, per defense: mean PSNR of the
default settings, of the attacker's choice (lowest matching loss) and of the oracle-tuned
upper bound (best true PSNR), over the same attacked updates, and what the search costs.
Writes benchmarks/results/attack_tuning.json.

    python benchmarks/attack_tuning.py [--clients 6] [--iterations 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from attacker.tuning import grid_points
from fedsim.config import from_dict
from fedsim.run_folder import RunFolder
from lab.orchestration.attacks import attack_run
from lab.validation import check_registries
from round_one import round_one_captures  # noqa: E402
from results_io import write_result  # noqa: E402  (benchmarks/ is on sys.path)

DEFENSES = {"none": [], "gradprune_0.9": [{"name": "gradprune", "params": {"p": 0.9}}]}
SPACE = {"lr": [0.03, 0.1, 0.3], "tv_weight": [0.0, 0.01, 0.1]}
DEFAULT = {"lr": 0.1, "tv_weight": 0.1}  # fedsim's [attack] defaults
TRIALS = 9  # the whole grid


def cell(defense: str, clients: int, iterations: int, data: str, out: Path) -> dict:
    cfg = check_registries(from_dict({
        "name": "tuning", "seed": 0, "device": "cpu", "threads": 2, "output_dir": str(out),
        "data": {"name": data}, "model": {"name": "lenet"},
        "federation": {"num_clients": clients, "num_rounds": 1, "algorithm": "fedsgd",
                       "batch_size": 2},
        "defenses": DEFENSES[defense],
        "attack": {"enabled": True, "when": "after", "iterations": iterations,
                   "rounds": [1], "clients": "all", "knowledge": {"labels": "known"},
                   "tuning": {"search": "grid", "trials": TRIALS, "space": SPACE}}}))
    run_dir = round_one_captures(cfg, out / f"run_{data}_{defense}")
    t0 = time.perf_counter()
    own = attack_run(cfg, run_dir, progress=False)
    seconds = time.perf_counter() - t0
    own = sorted(own, key=_pid)
    oracle = sorted((json.loads(x) for x in
                     RunFolder(run_dir).oracle_leakage.read_text().splitlines()), key=_pid)
    grid = grid_points(SPACE, TRIALS, 0)  # the order the search ran its candidates in
    default = [o["tuning"]["trial_psnr"][grid.index(DEFAULT)] for o in oracle]
    mean = statistics.fmean
    return {"data": data, "defense": defense, "updates": len(own), "iterations": iterations,
            "candidates": len(grid),
            "psnr_default": mean(default), "psnr_attacker_choice": mean(r["psnr"] for r in own),
            "psnr_oracle_tuned": mean(o["psnr"] for o in oracle),
            "attacker_choice_at_least_default": sum(r["psnr"] >= d - 1e-9
                                                    for r, d in zip(own, default)),
            "chosen": [r["tuning"]["chosen"] for r in own],
            "seconds_search": seconds}


def _pid(r):
    return r["partition_id"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--data", default="natural32")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [cell(d, args.clients, args.iterations, args.data, Path(tmp)) for d in DEFENSES]
    write_result("attack_tuning", {"space": SPACE, "default": DEFAULT, "rows": rows})


if __name__ == "__main__":
    main()
