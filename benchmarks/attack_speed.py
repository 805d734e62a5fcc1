"""Attack steps per second, fast path (vmapped restarts, torch.func) against the plain
reference loop (autograd, one restart after another), in the same run; plus the quality
each registered attack reaches at a fixed step budget. Writes
benchmarks/results/attack_speed.json.

    python benchmarks/attack_speed.py [--steps 20] [--restarts 4] [--quality-steps 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from attacker.attacks import ATTACKS
from attacker.inversion import Budget, InversionProblem, invert_adam, invert_adam_reference
from attacker.knowledge import Knowledge
from attacker.target import observe
from clients.training import batch_gradient
from fedsim.config import from_dict
from fedsim.experiment import experiment_for
from fedsim.metrics import LPIPSUnavailable, lpips_metric, score_reconstruction
from fedsim.oracle import private_batch
from fedsim.orchestration.inprocess import local_capture
from results_io import write_result  # noqa: E402  (benchmarks/ is on sys.path)


def _cfg(data, model, algorithm="fedsgd", batch=1, **fed):
    return from_dict({"seed": 0, "device": "cpu", "output_dir": tempfile.mkdtemp(),
                      "data": {"name": data}, "model": model,
                      "federation": {"num_clients": 2, "algorithm": algorithm,
                                     "batch_size": batch, **fed}})


def speed(name, cfg, batch, steps, restarts):
    exp = experiment_for(cfg)
    model = exp.new_model()
    idx = list(range(batch))
    x, y = exp.dataset.x_train[idx], exp.dataset.y_train[idx]
    g, _, _ = batch_gradient(model, x, y)
    prob = InversionProblem(model, g, batch, exp.dataset.image_shape, exp.dataset.num_classes,
                            labels=y)
    invert_adam(prob, Budget(iterations=2, restarts=restarts))  # warm-up
    row = {"model": name, "batch": batch, "restarts": restarts, "steps": steps}
    t = time.perf_counter(); invert_adam_reference(prob, Budget(iterations=steps, restarts=restarts))
    ref = time.perf_counter() - t
    total = steps * restarts
    row["reference_restart_steps_per_s"] = total / ref
    for mode in ("on", "off", "auto"):
        t = time.perf_counter()
        invert_adam(prob, Budget(iterations=steps, restarts=restarts, batch_restarts=mode))
        row[f"fast_{mode}_restart_steps_per_s"] = total / (time.perf_counter() - t)
        row[f"speedup_{mode}"] = row[f"fast_{mode}_restart_steps_per_s"] / row["reference_restart_steps_per_s"]
    return row


def quality(steps):
    try:
        lp = lpips_metric("vgg")
    except LPIPSUnavailable as err:
        lp, note = None, str(err)
    else:
        note = None
    out = []
    sgd = _cfg("digits", {"name": "lenet"}, batch=1)
    avg = _cfg("digits", {"name": "lenet"}, algorithm="fedavg", batch=4, local_steps=4, lr=1.0)
    for name in ATTACKS:
        cfg = avg if name.startswith("fedavg") else sgd
        exp, cap = experiment_for(cfg), local_capture(cfg)
        obs = observe(cap)
        x, y = private_batch(exp, cap)
        k = Knowledge(labels_mode="restored", batch_size=len(y))
        lr = 1.0 if name in ("dlg", "idlg") else 0.1
        iters = max(steps // 20, 1) if name in ("dlg", "idlg") else steps  # L-BFGS: 20 evals/step
        res = ATTACKS[name](Budget(iterations=iters, restarts=1, lr=lr)).run(obs, k)
        s = score_reconstruction(x, res.images, y, res.labels, lpips_fn=lp)
        out.append({"attack": name, "batch": len(y), "iterations": iters, "psnr": s["psnr"],
                    "ssim": s["ssim"], "lpips": s.get("lpips"), "label_accuracy": s["label_accuracy"],
                    "seconds": res.seconds})
    return out, note


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=4)
    ap.add_argument("--quality-steps", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("FEDSIM_BENCH_THREADS", "2")))
    lenet = _cfg("digits", {"name": "lenet"})
    resnet = _cfg("natural32", {"name": "resnet18", "norm": "batch", "width": 64})
    rows = [speed("lenet", lenet, 1, args.steps * 5, args.restarts),
            speed("lenet", lenet, 16, args.steps * 5, args.restarts),
            speed("resnet18", resnet, 1, args.steps, args.restarts),
            speed("resnet18", resnet, 4, args.steps, args.restarts)]
    qual, note = quality(args.quality_steps)
    result = {"device": "cpu", "threads": torch.get_num_threads(), "speed": rows,
              "quality": qual, "lpips_note": note}
    write_result("attack_speed", result)


if __name__ == "__main__":
    main()
