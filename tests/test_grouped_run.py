"""A run folder's captures attacked grouped give the leakage rows they give one at a time."""

import json

import pytest

from fedsim.capture import save_capture
from lab.orchestration.attacks import attack_run
from lab.orchestration.inprocess import local_capture
from tests.helpers import tiny_config

SCORES = ("psnr", "ssim", "rmse", "label_accuracy", "match_loss")


@pytest.mark.parametrize("algorithm", ["fedsgd", "fedavg"])
def test_grouped_run_folder_matches_one_at_a_time(tmp_path, algorithm):
    attack = {"enabled": True, "when": "after", "iterations": 6, "compile": "eager",
              "name": "inverting_gradients" if algorithm == "fedsgd" else "fedavg_replay",
              "rounds": [1], "clients": [0, 1, 2]}
    fed = {"algorithm": algorithm, "batch_size": 2, "num_clients": 3, "local_steps": 2} \
        if algorithm == "fedavg" else {"algorithm": algorithm, "batch_size": 2,
                                       "num_clients": 3}
    rows = {}
    for size in (1, 3):
        cfg = tiny_config(tmp_path / str(size), federation=fed,
                          attack={**attack, "group_size": size})
        run_dir = tmp_path / f"run{size}"
        run_dir.mkdir()
        (run_dir / "config.toml").write_text(cfg.to_toml())
        for pid in range(3):
            save_capture(run_dir, local_capture(cfg, 1, pid))
        rows[size] = attack_run(cfg, run_dir, progress=False)
        assert len(rows[size]) == 3 and not any("error" in r for r in rows[size])
        written = [json.loads(x) for x in (run_dir / "leakage.jsonl").read_text().splitlines()]
        assert len(written) == 3
    key = lambda r: (r["round"], r["partition_id"])  # noqa: E731
    for solo, grouped in zip(sorted(rows[1], key=key), sorted(rows[3], key=key)):
        assert key(solo) == key(grouped)
        for name in SCORES:
            if name in solo:
                assert grouped[name] == pytest.approx(solo[name], rel=2e-3, abs=2e-3), name
        assert set(solo) == set(grouped)
        assert grouped["engine"].endswith("+group3") and "group" not in solo["engine"]
