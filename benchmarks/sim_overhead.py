"""Time per round of `fedsim run` (Flower simulation on Ray) against the same training in a
plain PyTorch loop in this process. Writes benchmarks/results/sim_overhead.json.

    python benchmarks/sim_overhead.py [--rounds 10] [--clients 4] [--repeats 3]

Each repeat times the plain loop and then the simulation, so machine noise shows up as the
spread of the ratio across repeats (reported as min, median, max), not as one figure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

from fedsim.config import load  # noqa: E402
from fedsim.experiment import experiment_for  # noqa: E402
from lab.orchestration.inprocess import run_in_process  # noqa: E402
from lab.orchestration.simulation import run_simulation  # noqa: E402
from results_io import write_result  # noqa: E402  (benchmarks/ is on sys.path)


def plain_loop(cfg) -> float:
    """Same clients, same batches, same FedAvg, sequential in one process."""
    experiment_for(cfg)  # data loading is not part of a round
    run_in_process(cfg.model_copy(update={"federation": cfg.federation.model_copy(
        update={"num_rounds": 1})}))  # untimed warm-up: first calls of each op
    t0 = time.perf_counter()
    run_in_process(cfg)
    return (time.perf_counter() - t0) / cfg.federation.num_rounds


def one_repeat(cfg, rounds: int) -> dict:
    plain = plain_loop(cfg)
    t0 = time.perf_counter()
    result = run_simulation(cfg)
    total = time.perf_counter() - t0
    elapsed = {r["round"]: r["elapsed_s"] for r in result.rounds}
    # elapsed_s is measured by the server from before round 0's evaluation. Round 1 also
    # starts the Ray actors (torch import, data loading); rounds 2..N are the steady state.
    per_round = (elapsed[rounds] - elapsed[1]) / (rounds - 1)
    return {"plain_loop_s_per_round": plain, "simulation_first_round_s": elapsed[1] - elapsed[0],
            "simulation_s_per_round": per_round, "simulation_total_s": total,
            "ratio_per_round": per_round / plain,
            "ratio_including_startup": total / (plain * rounds)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = load()
    fed = cfg.federation.model_copy(update={"num_rounds": args.rounds, "num_clients": args.clients})
    attack = cfg.attack.model_copy(update={"enabled": False})
    cfg = cfg.model_copy(update={"federation": fed, "output_dir": tempfile.mkdtemp(),
                                 "attack": attack,
                                 "capture": cfg.capture.model_copy(update={"rounds": []})})
    torch.set_num_threads(cfg.threads)
    runs = [one_repeat(cfg, args.rounds) for _ in range(args.repeats)]
    ratios = sorted(r["ratio_per_round"] for r in runs)
    out = {
        "experiment": "experiments/quick.toml", "rounds": args.rounds, "clients": args.clients,
        "cpus": os.cpu_count(), "repeats": runs,
        "ratio_per_round_min": ratios[0], "ratio_per_round_median": ratios[len(ratios) // 2],
        "ratio_per_round_max": ratios[-1],
    }
    write_result("sim_overhead", out)


if __name__ == "__main__":
    main()
