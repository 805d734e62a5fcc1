"""The run's tidy tables, built from its two logs (metrics.jsonl, leakage.jsonl):

- `leakage.csv`: one row per attacked update (round, client, observer, attack, scores,
  knowledge, time) with that round's global and training accuracy beside it;
- `rounds.csv`: one row per round: accuracy, loss, client failures, DP epsilon so far (with
  its delta and what it bounds, or "not accounted"), and per observer the statistics of its
  attacks that round;
- `summary.csv`: one row per observer over the whole run.

A statistic is the mean over attacked updates, its 95% bootstrap interval, n and the worst
case (highest PSNR, lowest LPIPS), for every metric and for the margin over the best
trivial baseline (`lab.stats`, `fedsim.metrics.baselines`). All are rebuilt whole from the
logs, so `fedsim evaluate RUN_DIR` reproduces them for any run folder, and a run that
stopped midway still gets tables of what it finished.
"""

from __future__ import annotations

from pathlib import Path

from fedsim.metrics import HIGHER_LEAKS
from fedsim.privacy import NOT_ACCOUNTED
from fedsim.records import read_rows, write_csv
from lab.stats import summarize
from fedsim.run_folder import RunFolder

ROUND_FIELDS = ("global_accuracy", "global_loss", "train_accuracy", "train_loss", "clients",
                "failures", "dp_epsilon", "dp_delta", "dp_accounting")
# every figure a table summarises, with its direction (True: higher leaks more)
FIGURES = {**HIGHER_LEAKS, **{f"margin_{m}": True for m in HIGHER_LEAKS},
           "label_accuracy": True}


def _round_fields(r: dict) -> dict:
    """A metrics row's round fields; a round without an epsilon says "not accounted"."""
    out = {k: r.get(k) for k in ROUND_FIELDS}
    if out["dp_epsilon"] is None:
        out["dp_accounting"] = NOT_ACCOUNTED
    return out


def _flat(row: dict) -> dict:
    out = {k: v for k, v in row.items() if not isinstance(v, (dict, list))}
    for key, value in row.get("knowledge", {}).items():
        out[f"knowledge_{key}"] = value
    return out


def leakage_table(run_dir: Path) -> list[dict]:
    rounds = {r["round"]: r for r in read_rows(RunFolder(run_dir).metrics)}
    return [{**_flat(row), **{f"round_{k}": v
                              for k, v in _round_fields(rounds.get(row["round"], {})).items()}}
            for row in read_rows(RunFolder(run_dir).leakage)]


def scored_attacks(run_dir: Path) -> list[dict]:
    return [r for r in read_rows(RunFolder(run_dir).leakage) if "error" not in r]


def attack_statistics(attacks: list[dict], prefix: str = "") -> dict:
    """`{prefix}attacks` (n), and per figure its mean, interval, n and worst case, the
    share of updates that beat every baseline."""
    row = {f"{prefix}attacks": len(attacks)}
    for figure, higher in FIGURES.items():
        stat = summarize((a.get(figure) for a in attacks), higher_leaks=higher)
        if stat.n:
            row.update(stat.as_row(f"{prefix}{figure}"))
    judged = [a["beats_baseline"] for a in attacks if "beats_baseline" in a]
    if judged:
        row[f"{prefix}beats_baseline_share"] = sum(judged) / len(judged)
    return row


def rounds_table(run_dir: Path) -> list[dict]:
    attacks = scored_attacks(run_dir)
    out = []
    for r in read_rows(RunFolder(run_dir).metrics):
        fields = _round_fields(r)
        row = {"round": r["round"], **{k: v for k, v in fields.items()
                                       if k in r or k == "dp_accounting"},
               **{f"client_{pid}_train_accuracy": acc
                  for pid, acc in r.get("client_train_accuracy", {}).items()}}
        for observer in sorted({a["observer"] for a in attacks}):
            mine = [a for a in attacks if a["round"] == r["round"] and a["observer"] == observer]
            if mine:
                row.update(attack_statistics(mine, f"{observer}_"))
        out.append(row)
    return out


def summary_table(run_dir: Path) -> list[dict]:
    """One row per observer: its attacks over every round."""
    attacks = scored_attacks(run_dir)
    return [{"observer": observer,
             **attack_statistics([a for a in attacks if a["observer"] == observer])}
            for observer in sorted({a["observer"] for a in attacks})]


def build_tables(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """Write leakage.csv, rounds.csv and summary.csv; return the first two's rows."""
    run_dir = Path(run_dir)
    leakage, rounds = leakage_table(run_dir), rounds_table(run_dir)
    write_csv(run_dir / "leakage.csv", leakage)
    write_csv(RunFolder(run_dir).rounds_csv, rounds)
    write_csv(RunFolder(run_dir).summary_csv, summary_table(run_dir))
    return leakage, rounds
