"""The two models of a mixed batch (`attack.mixing`: the B mixes, or k x B sources mixed
by the declared mean coefficients) against MixUp and Intra-InstaHide, on the same updates:
mean PSNR and LPIPS-free SSIM of each, their paired difference with its 95% bootstrap
interval, and the undefended attack on the same private batches for scale. Writes
benchmarks/results/mixing_adaptation.json.

The setting is the real-data defenses sweep's (experiments/sweeps/paper_defenses_fashion.toml:
Fashion-MNIST, DLG's LeNet, one FedAvg step of 2 images, the FedAvg replay with known
labels, here the granted soft labels; 1,000 steps, lr 0.1, TV 0.01).

    python benchmarks/mixing_adaptation.py [--clients 8] [--iterations 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fedsim.config import from_dict
from lab.orchestration.attacks import attack_run
from lab.stats import compare, summarize
from lab.validation import check_registries
from round_one import round_one_captures  # noqa: E402
from results_io import write_result  # noqa: E402  (benchmarks/ is on sys.path)

DEFENSES = {"none": [], "mixup": [{"name": "mixup"}], "instahide": [{"name": "instahide"}]}
MODES = ("mixes", "sources")


def run(defense: str, mixing: str, clients: int, iterations: int, out: Path) -> dict:
    """PSNR and SSIM per attacked update (keyed by client), and the seconds it took."""
    cfg = check_registries(from_dict({
        "name": "mixing", "seed": 0, "device": "cpu", "threads": 2, "output_dir": str(out),
        "data": {"name": "fashion_mnist", "max_train": 6000}, "model": {"name": "lenet"},
        "federation": {"num_clients": clients, "num_rounds": 1, "algorithm": "fedavg",
                       "local_steps": 1, "batch_size": 2, "lr": 0.1},
        "defenses": DEFENSES[defense],
        "attack": {"enabled": True, "name": "fedavg_replay", "when": "after",
                   "iterations": iterations, "lr": 0.1, "signed": False, "tv_weight": 0.01,
                   "mixing": mixing, "rounds": [1], "clients": "all",
                   "knowledge": {"labels": "known"}}}))
    run_dir = round_one_captures(cfg, out / f"run_{defense}_{mixing}")
    t0 = time.perf_counter()
    rows = attack_run(cfg, run_dir, progress=False)
    return {"psnr": {r["partition_id"]: r["psnr"] for r in rows},
            "ssim": {r["partition_id"]: r["ssim"] for r in rows},
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=1000)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        undefended = run("none", "mixes", args.clients, args.iterations, Path(tmp))
        for defense in ("mixup", "instahide"):
            got = {m: run(defense, m, args.clients, args.iterations, Path(tmp)) for m in MODES}
            rows.append({
                "defense": defense,
                **{f"psnr_{m}": summarize(got[m]["psnr"].values()).text() for m in MODES},
                **{f"ssim_{m}": summarize(got[m]["ssim"].values()).text(3) for m in MODES},
                "sources_minus_mixes_psnr": compare(got["sources"]["psnr"],
                                                    got["mixes"]["psnr"]).text(),
                "mixes_minus_undefended_psnr": compare(got["mixes"]["psnr"],
                                                       undefended["psnr"]).text(),
                **{f"seconds_{m}": round(got[m]["seconds"], 1) for m in MODES}})
    write_result("mixing_adaptation", {
        "setting": "fashion_mnist (6,000), LeNet, one FedAvg step of 2, fedavg_replay "
                   f"{args.iterations} steps (lr 0.1, TV 0.01), known (soft) labels, "
                   f"round 1, {args.clients} clients",
        "undefended_psnr": summarize(undefended["psnr"].values()).text(), "rows": rows})


if __name__ == "__main__":
    main()
