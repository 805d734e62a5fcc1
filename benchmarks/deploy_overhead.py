"""Time per round of the same experiment in the process topology (`fedsim deploy --local`:
SuperLink, SuperNodes, SuperExecs on loopback, docker-compose.yml's services as processes)
against Flower's simulation engine on Ray (`fedsim run`), from each run's metrics.jsonl
(`elapsed_s` at the end of every round). Steady state: rounds 2..N; round 1 apart (process
start, first FAB install, torch imports). With `--docker`, also docker-compose.yml itself
in containers (lab/stack.py, on a daemon of fedsim's own with the images of `fedsim images
build`), in the same run.

    python benchmarks/deploy_overhead.py [--rounds 6] [--docker]
        ->  benchmarks/results/deploy_overhead.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def per_round(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    t = [r["elapsed_s"] for r in sorted(rows, key=lambda r: r["round"]) if "elapsed_s" in r]
    return [b - a for a, b in zip(t, t[1:])]


def main() -> None:
    from fedsim.config import from_dict
    from lab.deploy import deploy_local
    from lab.orchestration.simulation import prepare_run_dir, run_simulation
    from lab.validation import validate

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--docker", action="store_true", help="the compose stack as well")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="depbench"))
    cfg = validate(from_dict({
        "name": "bench", "device": "cpu", "threads": 1, "output_dir": str(work),
        "data": {"name": "digits"}, "model": {"name": "lenet"},
        "federation": {"num_clients": 2, "num_rounds": args.rounds, "algorithm": "fedavg",
                       "local_steps": 4, "batch_size": 8, "lr": 1.0},
        "capture": {"rounds": [1]},
        "attack": {"enabled": False}}))  # no attacker competing for the cores while timed
    sim = run_simulation(cfg, run_dir=work / "sim").run_dir
    dep_dir = prepare_run_dir(cfg, work / "deployed")
    deploy_local(cfg, dep_dir, timeout_s=900)
    runs = [("simulation", sim), ("process topology", dep_dir)]
    if args.docker:
        from lab.dockerd import DEFAULT_ROOT, compose_command, own_daemon
        from lab.images import build_all
        from lab.stack import run_stack

        with own_daemon(DEFAULT_ROOT) as env:
            build_all(env=env)
            runs.append(("containers", run_stack(cfg, compose_command(), work / "stack", env,
                                                 timeout_s=900).results))
    out = {}
    for name, folder in runs:
        rounds = per_round(folder)
        out[name] = {"first_round_s": rounds[0], "steady_rounds_s": rounds[1:],
                     "steady_median_s": statistics.median(rounds[1:])}
    out["ratio_steady"] = out["process topology"]["steady_median_s"] / out["simulation"]["steady_median_s"]
    if "containers" in out:
        out["ratio_steady_containers"] = (out["containers"]["steady_median_s"]
                                          / out["simulation"]["steady_median_s"])
    out["setting"] = "digits, LeNet, 2 clients, FedAvg 4 local steps of 8, 2-core CPU, loopback"
    path = ROOT / "benchmarks" / "results" / "deploy_overhead.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
