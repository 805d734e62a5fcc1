"""The run's tidy tables, built from its two logs (metrics.jsonl, leakage.jsonl):

- `leakage.csv`: one row per attacked update (round, client, observer, attack, scores,
  knowledge, time) with that round's global and training accuracy beside it;
- `rounds.csv`: one row per round: accuracy, loss, client failures, DP epsilon so far, and
  per observer the mean and worst-case leakage (highest PSNR, lowest LPIPS) of its attacks.

Both are rebuilt whole from the logs, so `fedsim evaluate RUN_DIR` reproduces them for any
run folder, and a run that stopped midway still gets tables of what it finished.
"""

from __future__ import annotations

from pathlib import Path

from fedsim.records import read_rows, write_csv

ROUND_FIELDS = ("global_accuracy", "global_loss", "train_accuracy", "train_loss", "clients",
                "failures", "dp_epsilon")
SCORES = ("psnr", "ssim", "rmse", "lpips", "label_accuracy")
WORST = {"psnr": max, "ssim": max, "rmse": min, "lpips": min}  # the most leakage


def _flat(row: dict) -> dict:
    out = {k: v for k, v in row.items() if not isinstance(v, (dict, list))}
    for key, value in row.get("knowledge", {}).items():
        out[f"knowledge_{key}"] = value
    return out


def leakage_table(run_dir: Path) -> list[dict]:
    rounds = {r["round"]: r for r in read_rows(Path(run_dir) / "metrics.jsonl")}
    return [{**_flat(row), **{f"round_{k}": rounds.get(row["round"], {}).get(k)
                              for k in ROUND_FIELDS}}
            for row in read_rows(Path(run_dir) / "leakage.jsonl")]


def rounds_table(run_dir: Path) -> list[dict]:
    attacks = [r for r in read_rows(Path(run_dir) / "leakage.jsonl") if "error" not in r]
    out = []
    for r in read_rows(Path(run_dir) / "metrics.jsonl"):
        row = {"round": r["round"], **{k: r.get(k) for k in ROUND_FIELDS if k in r},
               **{f"client_{pid}_train_accuracy": acc
                  for pid, acc in r.get("client_train_accuracy", {}).items()}}
        for observer in sorted({a["observer"] for a in attacks}):
            mine = [a for a in attacks if a["round"] == r["round"] and a["observer"] == observer]
            if not mine:
                continue
            row[f"{observer}_attacks"] = len(mine)
            for metric, worst in WORST.items():
                values = [a[metric] for a in mine if a.get(metric) is not None]
                if values:
                    row[f"{observer}_{metric}_mean"] = sum(values) / len(values)
                    row[f"{observer}_{metric}_worst"] = worst(values)
        out.append(row)
    return out


def build_tables(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """Write leakage.csv and rounds.csv; return their rows."""
    run_dir = Path(run_dir)
    leakage, rounds = leakage_table(run_dir), rounds_table(run_dir)
    write_csv(run_dir / "leakage.csv", leakage)
    write_csv(run_dir / "rounds.csv", rounds)
    return leakage, rounds
