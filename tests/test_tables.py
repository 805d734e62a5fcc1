"""The evaluator's tables: one leakage row per attacked update with its round's accuracy,
one summary row per round, rebuilt identically by `fedsim evaluate`, and re-scored from
the saved reconstructions without re-attacking."""

import json

from lab.cli import main
from lab.orchestration.simulation import run_experiment
from fedsim.records import read_rows
from tests.helpers import tiny_config


def test_tables_join_leakage_with_accuracy_and_evaluate_rebuilds_them(tmp_path):
    cfg = tiny_config(tmp_path, federation={"num_rounds": 2, "algorithm": "fedsgd",
                                            "batch_size": 1},
                      attack={"enabled": True, "name": "inverting_gradients",
                              "rounds": [1, 2], "clients": [0, 1], "iterations": 20,
                              "tv_weight": 0.0})
    result = run_experiment(cfg, progress=False)
    run_dir = result.run_dir
    leakage = (run_dir / "leakage.csv").read_text()
    rounds = (run_dir / "rounds.csv").read_text()
    rows = read_rows(run_dir / "leakage.jsonl")
    assert sorted((r["round"], r["partition_id"]) for r in rows) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    metrics = {r["round"]: r for r in read_rows(run_dir / "metrics.jsonl")}
    header, *lines = leakage.splitlines()
    assert len(lines) == 4 and "round_global_accuracy" in header.split(",")
    import csv

    table = list(csv.DictReader(leakage.splitlines()))
    for row in table:
        assert float(row["round_global_accuracy"]) == metrics[int(row["round"])]["global_accuracy"]
    summary = list(csv.DictReader(rounds.splitlines()))
    assert [int(r["round"]) for r in summary] == [0, 1, 2]
    for r in summary[1:]:  # per-client training accuracy beside the mean
        per_client = [float(r[f"client_{p}_train_accuracy"]) for p in (0, 1)]
        assert abs(sum(per_client) / 2 - float(r["train_accuracy"])) < 1e-9
    r1 = [float(r["psnr"]) for r in rows if r["round"] == 1]
    assert float(summary[1]["server_psnr_worst"]) == max(r1)
    assert float(summary[1]["server_psnr_mean"]) == sum(r1) / 2
    assert int(summary[1]["server_psnr_n"]) == 2 and summary[1]["server_psnr_low"] == ""
    for r in rows:  # every attack beside its baselines, and its margin over the best
        best = max(b["psnr"] for b in r["baselines"].values())
        assert set(r["baselines"]) == {"dataset_mean", "batch_colour"}
        assert abs(r["margin_psnr"] - (r["psnr"] - best)) < 1e-9
        assert r["beats_baseline"] == (r["margin_psnr"] > 0)
    overall = list(csv.DictReader((run_dir / "summary.csv").read_text().splitlines()))
    assert [o["observer"] for o in overall] == ["server"]
    assert int(overall[0]["attacks"]) == 4 and int(overall[0]["psnr_n"]) == 4
    assert abs(float(overall[0]["psnr_mean"]) - sum(r["psnr"] for r in rows) / 4) < 1e-9

    (run_dir / "leakage.csv").unlink()
    (run_dir / "rounds.csv").unlink()
    assert main(["evaluate", str(run_dir)]) == 0
    assert (run_dir / "leakage.csv").read_text() == leakage
    assert (run_dir / "rounds.csv").read_text() == rounds

    # re-score with another pairing metric: same reconstructions, scores recomputed
    assert main(["evaluate", str(run_dir), "--match-on", "ssim"]) == 0
    again = read_rows(run_dir / "leakage.jsonl")
    assert [r["matched_on"] for r in again] == ["ssim"] * 4
    assert [r["grid"] for r in again] == [r["grid"] for r in rows]
    for old, new in zip(rows, again):  # batch of one: the pairing cannot change the score
        assert abs(old["psnr"] - new["psnr"]) < 1e-9
    detail = json.loads((run_dir / again[0]["result"]).read_text())
    assert detail["matched_on"] == "ssim"
