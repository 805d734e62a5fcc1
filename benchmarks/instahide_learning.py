"""Does Intra-InstaHide learn at CPU scale, and is its training path correct?

The paper-defenses sweep (experiments/sweeps/paper_defenses.toml: digits, GroupNorm ConvNet
width 16, 4 clients, 40 FedAvg rounds of one local step of 8 at lr 0.5) leaves InstaHide at
chance accuracy. This benchmark tells the setting from a bug:

1. Training-path checks on the batch an InstaHide client actually trains on
   (clients.local.training_batches): soft labels summing to one that give the true class
   at least the own image's coefficient, |x| equal to the mixed images (re-derived with
   the same defense rng), per-pixel signs with p = 0.5, and the images the global model
   is scored on (clean test images).
2. A grid with the in-process trainer (lab.orchestration.inprocess.run_in_process): defense
   {none, flip_only, mixup, instahide} x k {2, 4} (mixing defenses) x local steps {1, 4}
   x lr {0.5, 0.1} x seeds {0, 1, 2}, 200 rounds each. Accuracy is read at rounds 40, 100
   and 200 of the same run (a round's batches and masks depend only on seed, round and
   client, so round 40 of a 200-round run is the 40-round run). `flip_only` applies
   InstaHide's sign flip to unmixed images with one-hot labels (transform_batch
   monkeypatched in this script only) to separate the flip's cost from the mixing's.
   Besides the clean test accuracy the trainer reports, the global model is also scored on
   sign-flipped test images (one fixed random mask), the distribution it trained on.

Writes benchmarks/results/instahide_learning.json (about 6 minutes on one core):

    python benchmarks/instahide_learning.py [--rounds 200] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import lab.orchestration.inprocess as inprocess
from clients.defenses import build_defenses
from clients.defenses.instahide import IntraInstaHide, sign_mask
from clients.defenses.mixing import mix
from clients.local import training_batches
from fedsim.accuracy import evaluate
from fedsim.config import from_dict
from fedsim.data.batches import defense_rng
from fedsim.experiment import experiment_for
from results_io import write_result  # noqa: E402  (benchmarks/ is on sys.path)

CHECKPOINTS = (40, 100, 200)


def config(defenses, rounds=40, steps=1, lr=0.5, seed=0):
    """The paper_defenses.toml setting, with the knobs of the grid."""
    return from_dict({
        "seed": seed, "device": "cpu", "output_dir": tempfile.mkdtemp(),
        "data": {"name": "digits"},
        "model": {"name": "convnet", "norm": "group", "width": 16},
        "defenses": defenses,
        "federation": {"num_clients": 4, "num_rounds": rounds, "algorithm": "fedavg",
                       "local_steps": steps, "batch_size": 8, "lr": lr},
    })


# ----------------------------------------------------------------- training-path checks
def check_training_path(rounds=(1, 2, 3)) -> dict:
    cfg = config([{"name": "instahide"}], steps=4)
    exp = experiment_for(cfg)
    ds = exp.dataset
    (d,) = build_defenses(cfg)
    label_sum_err, abs_err, y_err, neg, nonzero, own_max = 0.0, 0.0, 0.0, 0, 0, True
    argmax_true, examples, true_mass_ok = 0, 0, True
    zero_stays_zero = True
    for rnd, pid in itertools.product(rounds, range(cfg.federation.num_clients)):
        batches = training_batches(exp, rnd, pid, [d], torch.device("cpu"))
        # re-derive the mixes with the same rng stream, consuming it as the client does
        rng = defense_rng(cfg.seed, rnd, pid)
        part = exp.partitions[pid]
        for (x, y), idx in zip(batches, exp.client_batches(rnd, pid)):
            m = mix(ds.x_train[idx], ds.y_train[idx], ds.x_train[part], ds.y_train[part],
                    np.searchsorted(part, idx), ds.num_classes, d.params, rng)
            sign_mask(tuple(m.x.shape), rng)  # the flip's draw, to keep the stream aligned
            label_sum_err = max(label_sum_err, (y.sum(1) - 1).abs().max().item())
            argmax_true += int((y.argmax(1) == ds.y_train[idx]).sum())
            examples += len(idx)
            true_mass = y[torch.arange(len(idx)), ds.y_train[idx]]
            true_mass_ok &= bool((true_mass >= m.coeffs[:, 0] - 1e-6).all())
            own_max &= bool((m.coeffs[:, 0] >= m.coeffs.max(1).values).all())
            abs_err = max(abs_err, (x.abs() - m.x).abs().max().item())
            y_err = max(y_err, (y - m.y).abs().max().item())
            nz = m.x != 0
            zero_stays_zero &= bool((x[~nz] == 0).all())
            neg += int((x[nz] < 0).sum())
            nonzero += int(nz.sum())
    # are masks per pixel and fresh per image? (two images' masks agree on ~half the pixels)
    s = sign_mask((64, 1, 8, 8), np.random.default_rng(0)).flatten(1)
    agree = (s[:, None] == s[None]).float().mean(-1)
    off_diag = agree[~torch.eye(64, dtype=bool)].mean().item()
    return {
        "batches_checked": f"rounds {list(rounds)}, all 4 clients, 4 local steps of 8",
        "labels_soft_sum_to_one_max_error": label_sum_err,
        "true_class_mass_at_least_own_coefficient": true_mass_ok,
        # below 1 by design: partners of one other class can outweigh the own image
        "fraction_label_argmax_is_true_label": argmax_true / examples,
        "own_image_has_largest_coefficient": own_max,
        "abs_x_equals_mixed_image_max_error": abs_err,
        "labels_equal_mixed_labels_max_error": y_err,
        "fraction_negative_among_nonzero_pixels": neg / nonzero,
        "nonzero_pixels": nonzero,
        "mask_agreement_between_images": off_diag,
        "train_pixel_range": [float(x.min()), float(x.max())],
        "test_images": "clean: fedsim/accuracy.evaluate on dataset.x_test in [0, 1], "
                       "no mixing, no flip (as in GradAttack, the paper's code)",
        "test_pixel_range": [float(ds.x_test.min()), float(ds.x_test.max())],
        "model_normalises_inside": "ConvNet computes (x - mean) / std of the clean train set "
                                   "on whatever it is fed (flipped images included)",
    }


# --------------------------------------------------------------------------- the grid
def flip_only(self, x, y, num_classes, rng, pool):
    """InstaHide's sign flip on the unmixed batch, one-hot labels: the flip alone."""
    return sign_mask(tuple(x.shape), rng) * x, F.one_hot(y, num_classes).float()


def run(defenses, *, rounds, steps, lr, seed, flip_only_patch=False):
    cfg = config(defenses, rounds, steps, lr, seed)
    exp = experiment_for(cfg)
    mask = sign_mask(tuple(exp.dataset.x_test.shape), np.random.default_rng([seed, 99]))
    flipped_test = mask * exp.dataset.x_test
    flipped_acc = []

    def evaluate_both(model, x, y):  # the trainer's clean score, plus one on flipped images
        flipped_acc.append(evaluate(model, flipped_test, y)[1])
        return evaluate(model, x, y)

    original = IntraInstaHide.transform_batch
    inprocess.evaluate = evaluate_both
    if flip_only_patch:
        IntraInstaHide.transform_batch = flip_only
    try:
        t0 = time.perf_counter()
        rows = inprocess.run_in_process(cfg)
        seconds = time.perf_counter() - t0
    finally:
        inprocess.evaluate = evaluate
        IntraInstaHide.transform_batch = original
    acc = [r["global_accuracy"] for r in rows]
    first_above = next((i + 1 for i, a in enumerate(acc) if a > 0.5), None)
    return {
        **{f"acc_round_{c}": acc[c - 1] for c in CHECKPOINTS if c <= rounds},
        **{f"flipped_test_acc_round_{c}": flipped_acc[c - 1] for c in CHECKPOINTS if c <= rounds},
        "final_loss": rows[-1]["global_loss"],
        "first_round_above_0.5": first_above,
        "seconds": seconds,
    }


VARIANTS = {
    "none": ([], False),
    "flip_only": ([{"name": "instahide"}], True),
    "mixup_k2": ([{"name": "mixup", "params": {"k": 2}}], False),
    "mixup_k4": ([{"name": "mixup", "params": {"k": 4}}], False),
    "instahide_k2": ([{"name": "instahide", "params": {"k": 2}}], False),
    "instahide_k4": ([{"name": "instahide", "params": {"k": 4}}], False),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    checks = check_training_path()
    print("training path:", checks)

    # round 40 of a long run is the 40-round run: confirm once on the sweep's own setting
    short = inprocess.run_in_process(config([{"name": "instahide"}], rounds=40))
    sweep_setting_40 = short[-1]["global_accuracy"]

    runs, summary = [], []
    for variant, steps, lr in itertools.product(VARIANTS, (1, 4), (0.5, 0.1)):
        defenses, patch = VARIANTS[variant]
        per_seed = []
        for seed in args.seeds:
            r = run(defenses, rounds=args.rounds, steps=steps, lr=lr, seed=seed,
                    flip_only_patch=patch)
            r.update(variant=variant, local_steps=steps, lr=lr, seed=seed)
            runs.append(r)
            per_seed.append(r)
        row = {"variant": variant, "local_steps": steps, "lr": lr}
        for key in per_seed[0]:
            if key.startswith(("acc_round", "flipped_test_acc")):
                row[key + "_mean"] = float(np.mean([p[key] for p in per_seed]))
        row["first_round_above_0.5"] = [p["first_round_above_0.5"] for p in per_seed]
        row["seconds_per_run"] = float(np.mean([p["seconds"] for p in per_seed]))
        summary.append(row)
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})

    out = {
        "experiment": "digits, ConvNet GroupNorm width 16, 4 clients, FedAvg batch 8 "
                      "(experiments/sweeps/paper_defenses.toml), in-process trainer; "
                      "accuracy = global model on clean test images",
        "command": "python benchmarks/instahide_learning.py " +
                   f"--rounds {args.rounds} --seeds {' '.join(map(str, args.seeds))}",
        "seeds": args.seeds,
        "chance_accuracy": 0.1,
        "sweep_setting_40_rounds_instahide_seed0": sweep_setting_40,
        "same_as_grid_round_40": sweep_setting_40 == next(
            r["acc_round_40"] for r in runs if r["variant"] == "instahide_k4"
            and r["local_steps"] == 1 and r["lr"] == 0.5 and r["seed"] == 0),
        "training_path_checks": checks,
        "summary": summary,
        "runs": runs,
        "total_seconds": time.perf_counter() - t_start,
    }
    write_result("instahide_learning", out)


if __name__ == "__main__":
    main()
