"""Every update of a run attacked, end to end: `fedsim run` wall time, the time the attacks
add after the last round, and the attacks' share of the CPU, one at a time against grouped.
Writes benchmarks/results/every_update.json.

    python benchmarks/every_update.py [--cases default,default-all,...] [--iterations N]

Cases (attacks during training, the quick experiment's attack at its configured budget):
  default           experiments/quick.toml as shipped: one attacked update (the baseline)
  default-all       the same run, every client of every round captured and attacked (80)
  clients100-all    100 digits clients, 10 a round, 20 rounds: every sampled update (200)
each "-all" case once with `attack.group_size = 1` and once unset (grouped).

The last round's end is when its row lands in metrics.jsonl (polled every 0.2 s); what
follows it is the attacks still running, then the tables, the report and Ray's shutdown; the
attacks' CPU share is the sum of their recorded seconds (a group's once) over wall time x
cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w

sys.path.insert(0, str(Path(__file__).parent))
from results_io import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def config(case: str, group_size, iterations) -> dict:
    cfg = tomllib.loads((ROOT / "experiments" / "quick.toml").read_text())
    cfg["output_dir"] = "runs"
    if iterations:
        cfg["attack"]["iterations"] = iterations
    if case == "default":
        return cfg
    if case == "clients100-all":
        cfg["federation"].update(num_clients=100, clients_per_round=10)
    cfg["capture"]["rounds"] = "all"
    cfg["attack"].update(rounds="all", clients="all")
    if group_size is not None:
        cfg["attack"]["group_size"] = group_size
    return cfg


def last_round_end(metrics: Path, rounds: int, proc: subprocess.Popen, t0: float):
    """Seconds from start until the last round's row is in metrics.jsonl (None if never)."""
    seen = None
    while proc.poll() is None:
        if seen is None and metrics.exists():
            for line in metrics.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("round") == rounds and "error" not in row:
                    seen = time.perf_counter() - t0
        time.sleep(0.2)
    return seen


def attack_seconds(leakage: Path) -> tuple[int, float]:
    """(attacks recorded, CPU-seconds of attacking: a group's seconds counted once)."""
    rows = [json.loads(line) for line in leakage.read_text().splitlines() if line.strip()]
    total = 0.0
    for r in rows:
        engine = r.get("engine") or ""
        size = int(engine.rsplit("+group", 1)[1]) if "+group" in engine else 1
        total += (r.get("seconds") or 0.0) / size
    return len([r for r in rows if "error" not in r]), total


def one(case: str, group_size, iterations) -> dict:
    cfg = config(case, group_size, iterations)
    with tempfile.TemporaryDirectory() as tmp:
        path, run_dir = Path(tmp) / "exp.toml", Path(tmp) / "run"
        path.write_text(tomli_w.dumps(cfg))
        log = Path(tmp) / "stderr.log"  # a file, not a pipe nobody drains while it runs
        t0 = time.perf_counter()
        with open(log, "w") as err_file:
            proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "run", str(path),
                                     "--run-dir", str(run_dir)], cwd=ROOT, env=ENV,
                                    stdout=subprocess.DEVNULL, stderr=err_file)
            rounds_end = last_round_end(run_dir / "metrics.jsonl",
                                        cfg["federation"]["num_rounds"], proc, t0)
        wall = time.perf_counter() - t0
        err = log.read_text()
        attacks, seconds = attack_seconds(run_dir / "leakage.jsonl")
    row = {"case": case, "group_size": group_size if case != "default" else None,
           "exit": proc.returncode, "wall_s": round(wall, 1),
           "last_round_end_s": None if rounds_end is None else round(rounds_end, 1),
           "after_last_round_s": None if rounds_end is None else round(wall - rounds_end, 1),
           "attacks": attacks, "attack_cpu_s": round(seconds, 1),
           "attack_cpu_share": round(seconds / (wall * (os.cpu_count() or 1)), 3),
           "iterations": cfg["attack"]["iterations"]}
    if proc.returncode:
        row["stderr_tail"] = err[-500:]
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="default,default-all,clients100-all")
    ap.add_argument("--iterations", type=int, default=None,
                    help="attack steps (default: the quick experiment's)")
    args = ap.parse_args()
    rows = []
    for case in args.cases.split(","):
        for size in ([None] if case == "default" else [1, None]):
            rows.append(one(case, size, args.iterations))
    earlier = Path(__file__).parent / "results" / "every_update.json"
    if earlier.is_file():  # cases not run this time keep their earlier rows
        ran = {(r["case"], r["group_size"]) for r in rows}
        rows = [r for r in json.loads(earlier.read_text())["rows"]
                if (r["case"], r["group_size"]) not in ran] + rows
    base = next((r["wall_s"] for r in rows if r["case"] == "default"), None)
    for r in rows:
        r["wall_vs_default"] = round(r["wall_s"] / base, 2) if base else None
    write_result("every_update", {"cpu_count": os.cpu_count(), "rows": rows,
                                  "command": "python benchmarks/every_update.py " +
                                  " ".join(sys.argv[1:])})


if __name__ == "__main__":
    main()
