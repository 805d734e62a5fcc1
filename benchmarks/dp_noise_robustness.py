"""How much each gradient distance keeps leaking as DP-SGD's noise grows: the same private
batches, DP-SGD (Opacus, Poisson batches, clip 1) at several noise multipliers, attacked
with the whole-update cosine (Geiping et al.) and with DLG's l2 distance. Per noise level
and distance: mean PSNR with its 95% bootstrap interval, the margin over the best trivial
reconstruction, and cosine's paired lead over l2. Writes
benchmarks/results/dp_noise_robustness.json.

The attack knows what the defense declares (Poisson batch sizes, the sum over the expected
batch size) but not the noise: it matches the noisy update as if it were clean.

    python benchmarks/dp_noise_robustness.py [--clients 8] [--iterations 500]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fedsim.config import from_dict
from fedsim.run_folder import RunFolder
from lab.orchestration.attacks import attack_run
from lab.stats import compare, summarize
from lab.validation import check_registries
from round_one import round_one_captures  # noqa: E402
from results_io import write_result  # noqa: E402  (benchmarks/ is on sys.path)

NOISE = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
DISTANCES = ("cosine", "l2")


def captures(noise: float, clients: int, iterations: int, data: str, out: Path):
    """A run folder of round-1 captures under DP-SGD at `noise`, and its config."""
    cfg = check_registries(from_dict({
        "name": "dpnoise", "seed": 0, "device": "cpu", "threads": 2, "output_dir": str(out),
        "data": {"name": data}, "model": {"name": "lenet"},
        "federation": {"num_clients": clients, "num_rounds": 1, "algorithm": "fedavg",
                       "local_steps": 1, "batch_size": 2, "lr": 0.1},
        "defenses": [{"name": "dpsgd", "params": {"noise_multiplier": noise,
                                                  "max_grad_norm": 1.0}}],
        "attack": {"enabled": True, "name": "fedavg_replay", "when": "after",
                   "iterations": iterations, "lr": 0.1, "tv_weight": 0.01,
                   "rounds": [1], "clients": "all", "knowledge": {"labels": "known"}}}))
    run_dir = round_one_captures(cfg, out / f"run_{noise}")
    return cfg, run_dir


def attacked(cfg, run_dir: Path, distance: str) -> list[dict]:
    cfg = cfg.model_copy(update={"attack": cfg.attack.model_copy(update={"distance": distance})})
    RunFolder(run_dir).config.write_text(cfg.to_toml())
    RunFolder(run_dir).leakage.unlink(missing_ok=True)  # the other distance's rows
    # an update whose Poisson batches were all empty holds no private example: skipped
    return [r for r in attack_run(cfg, run_dir, progress=False) if r.get("psnr") is not None]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--data", default="fashion_mnist")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for noise in NOISE:
            cfg, run_dir = captures(noise, args.clients, args.iterations, args.data, Path(tmp))
            got = {d: attacked(cfg, run_dir, d) for d in DISTANCES}
            psnr = {d: {r["partition_id"]: r["psnr"] for r in got[d]} for d in DISTANCES}
            rows.append({
                "noise_multiplier": noise,
                **{f"psnr_{d}": summarize(psnr[d].values()).text() for d in DISTANCES},
                **{f"margin_{d}": summarize(r["margin_psnr"] for r in got[d]).text(signed=True)
                   for d in DISTANCES},
                "cosine_minus_l2": compare(psnr["cosine"], psnr["l2"]).text()})
            print(rows[-1], flush=True)
    write_result("dp_noise_robustness", {
        "skipped": "updates whose Poisson batches were all empty (noise only) are not "
                   "attacked, so n can be below the number of clients",
        "setting": f"{args.data}, LeNet, one FedAvg step of a Poisson batch (expected 2), "
                   f"DP-SGD clip 1, fedavg_replay {args.iterations} steps (lr 0.1, TV 0.01), "
                   f"known labels, round 1, {args.clients} clients",
        "rows": rows})


if __name__ == "__main__":
    main()
