"""The evaluator: scores an attack's reconstructions against the private originals, which
only it may load (through `lab.oracle`), and records the result.

Each attack leaves RUN_DIR/attacks/<stem>.png (originals over best-matched reconstructions)
and <stem>.json (every score, per image), and one row in RUN_DIR/leakage.jsonl, written as
soon as it is known so that a later failure loses nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from attacker.problem import InversionResult
from attacker.tuning import combined
from attacker.knowledge import Knowledge
from fedsim.capture import AGGREGATE, Capture, capture_stem
from fedsim.config import ExperimentConfig
from fedsim.experiment import Experiment, experiment_for
from fedsim.metrics import HIGHER_LEAKS, LPIPSUnavailable, lpips_metric, score_reconstruction
from fedsim.metrics.baselines import baseline_scores, margins
from lab.grids import save_grid
from lab.oracle import private_batch
from fedsim.records import append_row, read_rows
from fedsim.run_files import RunFileError, inside, read_json, read_tensors
from fedsim import run_folder
from fedsim.run_folder import ATTACK_FILES, RunFolder

log = logging.getLogger("fedsim")


def leakage_row(record: dict) -> dict:
    """The table row of an attack record: everything but the per-image detail."""
    return {k: v for k, v in record.items() if k not in ("per_image", "history")}


def _lpips(net: str):
    try:
        return lpips_metric(net), None
    except LPIPSUnavailable as err:
        return None, str(err)


def _free_stem(folder: Path, stem: str) -> str:
    """`stem`, or `stem_2`, `stem_3`, ...: a repeated attack never overwrites an earlier
    result (each keeps its own row in leakage.jsonl too)."""
    candidate, n = stem, 1
    while (folder / f"{candidate}.json").exists():
        n += 1
        candidate = f"{stem}_{n}"
    return candidate




def attacks_folder(run_dir: Path) -> Path:
    """RUN_DIR/attacks, made, and refused when it resolves outside the run folder (a link
    elsewhere): checked before an attack starts, and again for each file it writes."""
    out = inside(run_dir, "attacks", "the attacks folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def attack_stem(run_dir: Path, cap: Capture, name: str) -> str:
    """The free name of one attack's files, RUN_DIR/attacks/<stem>.png/.pt/.json, each
    checked to resolve inside the run folder."""
    out = attacks_folder(run_dir)
    stem = _free_stem(out, run_folder.attack_stem(cap.round, cap.observer, cap.partition_id,
                                                  name))
    for suffix in ATTACK_FILES:
        inside(run_dir, f"attacks/{stem}{suffix}", "an attack's file")
    return stem


def keep_record(run_dir: Path, stem: str, record: dict, table: Optional[Path] = None) -> None:
    """An attack's record: RUN_DIR/attacks/<stem>.json (every detail) and its row in
    `table` (RUN_DIR/leakage.jsonl unless given)."""
    record["result"] = f"attacks/{stem}.json"
    (Path(run_dir) / record["result"]).write_text(json.dumps(record, indent=2))
    append_row(table or RunFolder(run_dir).leakage, leakage_row(record))


def score(exp: Experiment, cap: Capture, images: torch.Tensor, labels: torch.Tensor,
          match_on: str, lpips_net: str) -> tuple[dict, str, Optional[str]]:
    """(scores against the private originals, metric that paired them, LPIPS note)."""
    originals, true_labels = private_batch(exp, cap)
    return score_images(originals, true_labels, images, labels, match_on, lpips_net,
                        mean_image=exp.dataset.x_train.mean(dim=0))


def score_images(originals: torch.Tensor, true_labels: Optional[torch.Tensor],
                 images: torch.Tensor, labels: Optional[torch.Tensor], match_on: str,
                 lpips_net: str, mean_image: Optional[torch.Tensor] = None
                 ) -> tuple[dict, str, Optional[str]]:
    """Best-match pairing and every metric, for any originals (yours included), with the
    trivial baselines (`fedsim.metrics.baselines`) scored the same way and the attack's
    margin over the best of them (the data set's mean image needs `mean_image`)."""
    lpips_fn, lpips_note = _lpips(lpips_net)
    matched_on = match_on if (match_on != "lpips" or lpips_fn) else "psnr"
    scores = score_reconstruction(originals, images, true_labels, labels,
                                  match_on=matched_on, lpips_fn=lpips_fn)
    scores["baselines"] = baseline_scores(
        originals, mean_image,
        lambda guess: score_reconstruction(originals, guess, match_on=matched_on,
                                           lpips_fn=lpips_fn))
    scores.update(margins(scores, scores["baselines"], HIGHER_LEAKS))
    scores["beats_baseline"] = scores.get(f"margin_{matched_on}", 0.0) > 0
    if true_labels is not None:
        scores["true_labels"] = true_labels.tolist()
    return scores, matched_on, lpips_note


def _scored_fields(scores: dict, matched_on: str, lpips_note: Optional[str]) -> dict:
    return {"matched_on": matched_on, "lpips": scores.get("lpips"), "lpips_note": lpips_note,
            **{k: v for k, v in scores.items() if k != "lpips"}}


def keep_attack(run_dir: Path, cap: Capture, name: str, knowledge: Knowledge,
                result: InversionResult, originals: Optional[torch.Tensor],
                true_labels: Optional[torch.Tensor], match_on: str, lpips_net: str,
                mean_image: Optional[torch.Tensor] = None, fields: Optional[dict] = None,
                table: Optional[Path] = None) -> dict:
    """Keep one attack, for every path that attacks (a fedsim run's, a foreign app's): the
    reconstructions (so `fedsim evaluate` can re-score them without re-attacking), the grid,
    the scores against `originals` when they are known (the experiment's oracle, or yours),
    and its record in attacks/<stem>.json and leakage.jsonl, with the caller's `fields`."""
    out_dir = attacks_folder(run_dir)
    stem = attack_stem(run_dir, cap, name)
    torch.save({"images": result.images, "labels": result.labels}, out_dir / f"{stem}.pt")
    record = {
        "round": cap.round, "partition_id": cap.partition_id, "observer": cap.observer,
        "attack": name, "kind": cap.kind,
        "knowledge": {"bn_stats": knowledge.bn_stats, "labels": knowledge.labels_mode,
                      "batch_size": knowledge.batch_size},
        "iterations": result.iterations, "restarts": len(result.restart_losses),
        "engine": result.engine,
        "match_loss": result.match_loss, "seconds": result.seconds, "device": result.device,
        "found_labels": result.labels.tolist(),
        "grid": f"attacks/{stem}.png", "reconstruction": f"attacks/{stem}.pt",
        **(fields or {}), "history": result.history,
    }
    if originals is None:
        save_grid(out_dir / f"{stem}.png", result.images)
        record["unscored"] = ("no originals given (--originals): the reconstructions are "
                              "written without scores")
    else:
        scores, matched_on, lpips_note = score_images(originals, true_labels, result.images,
                                                      result.labels, match_on, lpips_net,
                                                      mean_image=mean_image)
        save_grid(out_dir / f"{stem}.png", result.images[scores["pairing"]], originals)
        record.update(_scored_fields(scores, matched_on, lpips_note))
        log.info("attack %s on round %d %s: PSNR %.2f dB, SSIM %.3f, labels %.0f%%, %.1f s",
                 name, cap.round, capture_stem(cap.observer, cap.partition_id),
                 scores["psnr"], scores["ssim"], 100 * scores.get("label_accuracy", 0),
                 result.seconds)
        if lpips_note:
            log.info("%s", lpips_note)
    keep_record(run_dir, stem, record, table)
    return record


def record_attack(cfg: ExperimentConfig, exp: Experiment, cap: Capture, name: str,
                  knowledge: Knowledge, result: InversionResult, run_dir: Path,
                  fields: Optional[dict] = None, table: Optional[Path] = None) -> dict:
    """One attack of a fedsim run, scored against the private batch the oracle knows."""
    originals, true_labels = private_batch(exp, cap)
    target = ("aggregate of partitions " + str(list(cap.facts.partitions or []))
              + " (secure aggregation)") if cap.partition_id == AGGREGATE else "client"
    run = RunFolder(run_dir)
    capture = run.capture(cap.round, cap.observer, cap.partition_id).relative_to(run.root)
    return keep_attack(run_dir, cap, name, knowledge, result, originals, true_labels,
                       cfg.attack.match_on, cfg.evaluation.lpips_net,
                       mean_image=exp.dataset.x_train.mean(dim=0),
                       fields={"target": target, "batch_size": len(originals),
                               "capture": capture.as_posix(), **(fields or {})},
                       table=table)


ORACLE_SUFFIX = "_oracle_tuned"  # the attack name of an oracle-tuned record


def record_oracle(cfg: ExperimentConfig, exp: Experiment, cap: Capture, name: str,
                  knowledge: Knowledge, trials: list, run_dir: Path, searched: dict) -> dict:
    """Of a tuned attack's candidates (`attacker.tuning.Trial`), the one with the best
    true PSNR, charged the whole search's time as the attacker's choice is: what the strongest attacker of this family could reach, an upper bound that
    no attacker can select (it needs the private images). Kept in leakage_oracle.jsonl and
    as `<attack>_oracle_tuned`, never beside the attacker's own choice."""
    originals, _ = private_batch(exp, cap)
    psnr = [score_reconstruction(originals, t.result.images)["psnr"] for t in trials]
    pick = max(range(len(trials)), key=lambda i: psnr[i])
    return record_attack(cfg, exp, cap, name + ORACLE_SUFFIX, knowledge,
                         combined(trials[pick], trials), run_dir,
                         fields={"tuning": {**searched, "chosen": trials[pick].settings,
                                            "chosen_by": "true PSNR (oracle: an upper bound, "
                                                         "not an attack)",
                                            "trial_psnr": psnr}},
                         table=RunFolder(run_dir).oracle_leakage)


def rescore(run_dir: Path, cfg: ExperimentConfig, match_on: str, lpips_net: str) -> list[dict]:
    """Every recorded attack of a run folder scored again from its saved reconstructions,
    with another pairing metric or LPIPS backbone, without re-attacking. Rewrites each
    attack's JSON and leakage.jsonl; failed attacks keep their error rows. Every file a
    row names is read (inside the run folder only) before anything is rewritten."""
    run_dir = Path(run_dir)
    exp = experiment_for(cfg)
    planned = [row if "error" in row or "reconstruction" not in row else saved_attack(run_dir, row)
               for row in read_rows(RunFolder(run_dir).leakage)]
    rows = []
    for item in planned:
        if not isinstance(item, SavedAttack):
            rows.append(item)
            continue
        scores, matched_on, note = score(exp, item.capture, item.images, item.labels,
                                         match_on, lpips_net)
        record = {**item.record, **_scored_fields(scores, matched_on, note)}
        item.result.write_text(json.dumps(record, indent=2))
        rows.append(leakage_row(record))
    path = RunFolder(run_dir).leakage
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return rows


@dataclass
class SavedAttack:
    """One recorded attack read back from its run folder."""

    record: dict                 # attacks/<stem>.json
    result: Path                 # where that JSON is
    images: torch.Tensor         # the reconstructions
    labels: torch.Tensor
    capture: Capture


def saved_attack(run_dir: Path, row: dict) -> SavedAttack:
    """The files a leakage.jsonl row names, each resolved inside the run folder (a row that
    points elsewhere is refused) and read without running code, or one line naming it."""
    from fedsim.capture import load_capture

    paths = {key: inside(run_dir, row.get(key), f"{run_dir / 'leakage.jsonl'}: {key!r} of the "
                         f"round {row.get('round')} attack")
             for key in ROW_PATHS if key in row or key != "grid"}
    saved = read_tensors(paths["reconstruction"], "attack reconstruction file")
    if not {"images", "labels"} <= set(saved):
        raise RunFileError(f"{paths['reconstruction']} is not an attack reconstruction file "
                           "(expected images and labels)")
    try:
        capture = load_capture(paths["capture"])
    except FileNotFoundError as err:
        raise RunFileError(str(err)) from None
    return SavedAttack(read_json(paths["result"], "attack result"), paths["result"],
                       saved["images"], saved["labels"], capture)


ROW_PATHS = ("result", "reconstruction", "capture", "grid")  # files a leakage row names
