"""Per defense: extra time per client round against no defense (a ratio, same run), and the
global accuracy after a fixed number of rounds. Writes benchmarks/results/defense_cost.json.

Runs the in-process reference federation (lab.orchestration.inprocess) so the timing is
the defense's own cost, free of Ray and Flower scheduling noise; Flower's DP mods and
strategy wrappers act only in a Flower run and are measured there by the tests instead.

    python benchmarks/defense_cost.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from fedsim.config import from_dict
from fedsim.experiment import experiment_for
from lab.orchestration.inprocess import run_in_process
from results_io import write_result  # noqa: E402  (benchmarks/ is on sys.path)

SETTINGS = {
    "none": [],
    "gradprune_0.9": [{"name": "gradprune", "params": {"p": 0.9}}],
    "gradprune_0.99": [{"name": "gradprune", "params": {"p": 0.99}}],
    "mixup": [{"name": "mixup"}],
    "instahide": [{"name": "instahide"}],
    "gradprune_0.9+mixup": [{"name": "mixup"}, {"name": "gradprune", "params": {"p": 0.9}}],
    "gradprune_0.9+instahide": [{"name": "instahide"}, {"name": "gradprune", "params": {"p": 0.9}}],
    "dpsgd": [{"name": "dpsgd", "params": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}}],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="time is the fastest repeat")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    warmed = False
    for name, defenses in SETTINGS.items():
        cfg = from_dict({
            "seed": 0, "device": "cpu", "output_dir": tempfile.mkdtemp(),
            "data": {"name": "digits"}, "model": {"name": "lenet"}, "defenses": defenses,
            "federation": {"num_clients": 4, "num_rounds": args.rounds, "algorithm": "fedavg",
                           "local_steps": 4, "batch_size": 8, "lr": 1.0},
        })
        experiment_for(cfg)
        if not warmed:  # first use pays one-off costs (allocator, lazy imports)
            run_in_process(cfg)
            warmed = True
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            history = run_in_process(cfg)
            times.append(time.perf_counter() - t0)
        seconds = min(times)
        rows.append({"defense": name, "seconds_per_client_round":
                     seconds / (args.rounds * cfg.federation.num_clients),
                     "final_accuracy": history[-1]["global_accuracy"],
                     "dp_epsilon": history[-1].get("dp-epsilon")})
    base = rows[0]["seconds_per_client_round"]
    for r in rows:
        r["time_ratio_vs_none"] = r["seconds_per_client_round"] / base
    out = {"experiment": "digits, LeNet, 4 clients, FedAvg 4 local steps of 8, lr 1.0",
           "rounds": args.rounds, "results": rows}
    write_result("defense_cost", out)


if __name__ == "__main__":
    main()
