"""GradInversion's BatchNorm-prior weight under the current objective: PSNR at 300 steps
on natural32, a BatchNorm ConvNet (width 16), one FedSGD batch of 4, known labels, with the
private batch's own statistics (`exact`) and with the model's running statistics
(`inferred`), over a grid of weights; mean of 2 seeds.

    python benchmarks/bn_prior_weight.py

Writes benchmarks/results/bn_prior_weight.json.
"""

from __future__ import annotations

import tempfile

import torch

from attacker.attacks import ATTACKS
from attacker.problem import Budget
from attacker.target import observe
from fedsim.config import KnowledgeConfig, from_dict
from fedsim.experiment import experiment_for
from fedsim.metrics import score_reconstruction
from lab.oracle import grant_knowledge, private_batch
from lab.orchestration.inprocess import local_capture
from results_io import write_result

WEIGHTS = (0.0, 1e-3, 1e-2, 1e-1, 1.0)


def main():
    torch.set_num_threads(2)
    cfg = from_dict({"seed": 0, "device": "cpu", "output_dir": tempfile.mkdtemp(),
                     "data": {"name": "natural32"},
                     "model": {"name": "convnet", "norm": "batch", "width": 16},
                     "federation": {"num_clients": 2, "algorithm": "fedsgd", "batch_size": 4}})
    exp, cap = experiment_for(cfg), local_capture(cfg)
    obs = observe(cap)
    x, y = private_batch(exp, cap)
    rows = []
    for bn_stats in ("exact", "inferred"):
        k = grant_knowledge(KnowledgeConfig(bn_stats=bn_stats, labels="known"), exp, cap,
                            obs.model)
        for w in WEIGHTS:
            ps = [score_reconstruction(x, ATTACKS["gradinversion"](
                Budget(iterations=300, bn_weight=w)).run(obs, k, seed=s).images, y)["psnr"]
                for s in range(2)]
            rows.append({"bn_stats": bn_stats, "bn_weight": w, "psnr": ps,
                         "mean_psnr": sum(ps) / 2})
            print(f"{bn_stats:8s} weight {w:<6} {sum(ps) / 2:.2f} dB", flush=True)
    write_result("bn_prior_weight", {"rows": rows})


if __name__ == "__main__":
    main()
