"""Invert captured updates and score them: attacker on one side, evaluator on the other.

The attack receives the capture and the granted knowledge only; originals are loaded
afterwards by the oracle, for scoring. Results land in RUN_DIR/attacks/ (a grid PNG and a
JSON per attack) and one row per attack in RUN_DIR/leakage.jsonl.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from attacker.attacks import ATTACKS
from attacker.inversion import Budget
from attacker.target import observe
from fedsim.capture import AGGREGATE, capture_stem, load_capture
from fedsim.config import ExperimentConfig
from fedsim.device import resolve_device
from fedsim.experiment import experiment_for
from fedsim.metrics import LPIPSUnavailable, lpips_metric, score_reconstruction
from fedsim.oracle import grant_knowledge, private_batch
from fedsim.records import append_row

log = logging.getLogger("fedsim")


def budget_from(cfg: ExperimentConfig) -> Budget:
    a = cfg.attack
    return Budget(iterations=a.iterations, lr=a.lr, tv_weight=a.tv_weight,
                  bn_weight=a.bn_weight, restarts=a.restarts, init=a.init)


def _lpips(cfg: ExperimentConfig):
    try:
        return lpips_metric(cfg.evaluation.lpips_net), None
    except LPIPSUnavailable as err:
        return None, str(err)


def save_grid(path: Path, originals: torch.Tensor, reconstructions: torch.Tensor,
              per_row: int = 16) -> None:
    """Rows of up to `per_row` originals, each above their best-matched reconstructions."""
    rows = []
    for start in range(0, len(originals), per_row):
        o, r = originals[start:start + per_row], reconstructions[start:start + per_row]
        pad = per_row - len(o) if len(originals) > per_row else 0
        blank = torch.ones((pad, *o.shape[1:]))
        rows += [o, blank, r, blank]
    both = torch.cat(rows).clamp(0, 1)
    if both.shape[-1] < 32:
        both = F.interpolate(both, scale_factor=32 // both.shape[-1], mode="nearest")
    save_image(make_grid(both, nrow=min(per_row, len(originals)), padding=2, pad_value=1.0), path)


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False)

    def update(it: int, loss: float) -> None:
        bar.update(it + 1 - bar.n)
        bar.set_postfix(loss=f"{loss:.4g}")

    return update, bar.close


def attack_capture(cfg: ExperimentConfig, capture_path: Path, run_dir: Path,
                   attack_name: Optional[str] = None, progress: bool = True) -> dict:
    name = attack_name or cfg.attack.name
    cap = load_capture(capture_path)
    device = resolve_device(cfg.device)
    exp = experiment_for(cfg)
    # ---- attacker side: the capture and the granted knowledge, nothing else
    obs = observe(cap, device)
    knowledge = grant_knowledge(cfg.attack.knowledge, exp, cap, obs.model)
    attack = ATTACKS[name](budget_from(cfg))
    update, close = _progress_bar(cfg.attack.iterations,
                                  f"{name} r{cap.round} {capture_stem(cap.observer, cap.partition_id)}",
                                  progress)
    try:
        result = attack.run(obs, knowledge, seed=cfg.seed, progress=update)
    finally:
        close()
    # ---- evaluator side: originals come from the oracle, only now
    originals, true_labels = private_batch(exp, cap)
    lpips_fn, lpips_note = _lpips(cfg)
    match_on = cfg.attack.match_on if (cfg.attack.match_on != "lpips" or lpips_fn) else "psnr"
    scores = score_reconstruction(originals, result.images, true_labels, result.labels,
                                  match_on=match_on, lpips_fn=lpips_fn)
    stem = f"round_{cap.round:03d}_{capture_stem(cap.observer, cap.partition_id)}_{name}"
    out_dir = Path(run_dir) / "attacks"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_grid(out_dir / f"{stem}.png", originals, result.images[scores["pairing"]])
    record = {
        "round": cap.round, "partition_id": cap.partition_id, "observer": cap.observer,
        "target": ("aggregate of partitions " + str(cap.meta.get("partitions"))
                   + " (secure aggregation)") if cap.partition_id == AGGREGATE else "client",
        "attack": name, "kind": cap.kind, "batch_size": len(originals),
        "knowledge": {"bn_stats": knowledge.bn_stats, "labels": knowledge.labels_mode,
                      "batch_size": knowledge.batch_size},
        "iterations": result.iterations, "restarts": len(result.restart_losses),
        "match_loss": result.match_loss, "seconds": result.seconds, "device": result.device,
        "matched_on": match_on, "lpips": scores.get("lpips"),
        "lpips_note": lpips_note, **{k: v for k, v in scores.items() if k != "lpips"},
        "found_labels": result.labels.tolist(), "true_labels": true_labels.tolist(),
        "grid": f"attacks/{stem}.png", "history": result.history,
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2))
    summary = {k: v for k, v in record.items() if k not in ("per_image", "history")}
    append_row(Path(run_dir) / "leakage.jsonl", summary)
    log.info("attack %s on round %d client %d: PSNR %.2f dB, SSIM %.3f, labels %.0f%%, %.1f s",
             name, cap.round, cap.partition_id, scores["psnr"], scores["ssim"],
             100 * scores.get("label_accuracy", 0), result.seconds)
    if lpips_note:
        log.info("%s", lpips_note)
    return record


def attack_run(cfg: ExperimentConfig, run_dir: Path, progress: bool = True) -> list[dict]:
    """The configured attacks on a finished run's captures (rounds x clients)."""
    from fedsim.capture import round_dir

    results = []
    for rnd in cfg.attack.rounds:
        aggregate = round_dir(run_dir, rnd) / f"{capture_stem('server', AGGREGATE)}.pt"
        if aggregate.is_file():  # secure aggregation: no individual update exists
            log.info("round %d: the server holds only the aggregate (secure aggregation); "
                     "attacking the aggregate instead of clients %s", rnd, cfg.attack.clients)
            results.append(attack_capture(cfg, aggregate, run_dir, progress=progress))
            continue
        for client in cfg.attack.clients:
            path = round_dir(run_dir, rnd) / f"{capture_stem('server', client)}.pt"
            if not path.is_file():
                log.warning("no capture for round %d client %d (capture.rounds?)", rnd, client)
                continue
            results.append(attack_capture(cfg, path, run_dir, progress=progress))
    return results
