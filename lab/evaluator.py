"""The evaluator: scores an attack's reconstructions against the private originals, which
only it may load (through `lab.oracle`), and records the result.

Each attack leaves RUN_DIR/attacks/<stem>.png (originals over best-matched reconstructions)
and <stem>.json (every score, per image), and one row in RUN_DIR/leakage.jsonl, written as
soon as it is known so that a later failure loses nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from attacker.problem import InversionResult
from attacker.knowledge import Knowledge
from fedsim.capture import AGGREGATE, Capture, capture_stem
from fedsim.config import ExperimentConfig
from fedsim.experiment import Experiment, experiment_for
from fedsim.metrics import LPIPSUnavailable, lpips_metric, score_reconstruction
from lab.oracle import private_batch
from fedsim.records import append_row

log = logging.getLogger("fedsim")


def leakage_row(record: dict) -> dict:
    """The table row of an attack record: everything but the per-image detail."""
    return {k: v for k, v in record.items() if k not in ("per_image", "history")}


def _lpips(net: str):
    try:
        return lpips_metric(net), None
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


def _free_stem(folder: Path, stem: str) -> str:
    """`stem`, or `stem_2`, `stem_3`, ...: a repeated attack never overwrites an earlier
    result (each keeps its own row in leakage.jsonl too)."""
    candidate, n = stem, 1
    while (folder / f"{candidate}.json").exists():
        n += 1
        candidate = f"{stem}_{n}"
    return candidate


def score(exp: Experiment, cap: Capture, images: torch.Tensor, labels: torch.Tensor,
          match_on: str, lpips_net: str) -> tuple[dict, str, Optional[str]]:
    """(scores against the private originals, metric that paired them, LPIPS note)."""
    originals, true_labels = private_batch(exp, cap)
    return score_images(originals, true_labels, images, labels, match_on, lpips_net)


def score_images(originals: torch.Tensor, true_labels: Optional[torch.Tensor],
                 images: torch.Tensor, labels: Optional[torch.Tensor], match_on: str,
                 lpips_net: str) -> tuple[dict, str, Optional[str]]:
    """Best-match pairing and every metric, for any originals (yours included)."""
    lpips_fn, lpips_note = _lpips(lpips_net)
    matched_on = match_on if (match_on != "lpips" or lpips_fn) else "psnr"
    scores = score_reconstruction(originals, images, true_labels, labels,
                                  match_on=matched_on, lpips_fn=lpips_fn)
    if true_labels is not None:
        scores["true_labels"] = true_labels.tolist()
    return scores, matched_on, lpips_note


def _scored_fields(scores: dict, matched_on: str, lpips_note: Optional[str]) -> dict:
    return {"matched_on": matched_on, "lpips": scores.get("lpips"), "lpips_note": lpips_note,
            **{k: v for k, v in scores.items() if k != "lpips"}}


def record_attack(cfg: ExperimentConfig, exp: Experiment, cap: Capture, name: str,
                  knowledge: Knowledge, result: InversionResult, run_dir: Path) -> dict:
    """Score one attack and keep everything about it: the grid, the reconstructions (so
    `fedsim evaluate` can re-score them without re-attacking), the scores, a leakage row."""
    scores, matched_on, lpips_note = score(exp, cap, result.images, result.labels,
                                           cfg.attack.match_on, cfg.evaluation.lpips_net)
    originals, _ = private_batch(exp, cap)
    out_dir = run_dir / "attacks"
    out_dir.mkdir(parents=True, exist_ok=True)
    observed = capture_stem(cap.observer, cap.partition_id)
    stem = _free_stem(out_dir, f"round_{cap.round:03d}_{observed}_{name}")
    save_grid(out_dir / f"{stem}.png", originals, result.images[scores["pairing"]])
    torch.save({"images": result.images, "labels": result.labels}, out_dir / f"{stem}.pt")
    record = {
        "round": cap.round, "partition_id": cap.partition_id, "observer": cap.observer,
        "target": ("aggregate of partitions " + str(cap.meta.get("partitions"))
                   + " (secure aggregation)") if cap.partition_id == AGGREGATE else "client",
        "attack": name, "kind": cap.kind, "batch_size": len(originals),
        "knowledge": {"bn_stats": knowledge.bn_stats, "labels": knowledge.labels_mode,
                      "batch_size": knowledge.batch_size},
        "iterations": result.iterations, "restarts": len(result.restart_losses),
        "engine": result.engine,
        "match_loss": result.match_loss, "seconds": result.seconds, "device": result.device,
        **_scored_fields(scores, matched_on, lpips_note),
        "found_labels": result.labels.tolist(),
        "grid": f"attacks/{stem}.png", "reconstruction": f"attacks/{stem}.pt",
        "capture": f"captures/round_{cap.round:03d}/{observed}.pt",
        "result": f"attacks/{stem}.json", "history": result.history,
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2))
    append_row(run_dir / "leakage.jsonl", leakage_row(record))
    log.info("attack %s on round %d %s: PSNR %.2f dB, SSIM %.3f, labels %.0f%%, %.1f s",
             name, cap.round, capture_stem(cap.observer, cap.partition_id), scores["psnr"],
             scores["ssim"], 100 * scores.get("label_accuracy", 0), result.seconds)
    if lpips_note:
        log.info("%s", lpips_note)
    return record


def rescore(run_dir: Path, cfg: ExperimentConfig, match_on: str, lpips_net: str) -> list[dict]:
    """Every recorded attack of a run folder scored again from its saved reconstructions,
    with another pairing metric or LPIPS backbone, without re-attacking. Rewrites each
    attack's JSON and leakage.jsonl; failed attacks keep their error rows."""
    from fedsim.capture import load_capture
    from fedsim.records import read_rows

    run_dir = Path(run_dir)
    exp = experiment_for(cfg)
    rows = []
    for row in read_rows(run_dir / "leakage.jsonl"):
        if "error" in row or "reconstruction" not in row:
            rows.append(row)
            continue
        saved = torch.load(run_dir / row["reconstruction"], weights_only=True)
        cap = load_capture(run_dir / row["capture"])
        scores, matched_on, note = score(exp, cap, saved["images"], saved["labels"],
                                         match_on, lpips_net)
        record = {**json.loads((run_dir / row["result"]).read_text()),
                  **_scored_fields(scores, matched_on, note)}
        (run_dir / row["result"]).write_text(json.dumps(record, indent=2))
        rows.append(leakage_row(record))
    path = run_dir / "leakage.jsonl"
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return rows
