"""`fedsim attack` on a capture written the way the server writes it."""

import json

import pytest

from fedsim.capture import save_capture
from lab.cli import main
from lab.orchestration.inprocess import local_capture
from tests.helpers import tiny_config


def test_fedsim_attack_writes_grid_and_metrics(tmp_path):
    # 8x8 digits: no TV prior, signed steps at lr 0.3 (README, "Attack defaults")
    cfg = tiny_config(tmp_path, federation={"algorithm": "fedsgd", "batch_size": 1},
                      attack={"tv_weight": 0.0, "signed": True, "lr": 0.3})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(cfg.to_toml())
    path = save_capture(run_dir, local_capture(cfg))
    assert main(["attack", str(path), "--attack", "inverting_gradients", "--iterations", "100",
                 "--restarts", "2", "--labels", "restored", "--batch-size", "known"]) == 0
    out = json.loads((run_dir / "attacks" / "round_001_server_client_000_inverting_gradients.json").read_text())
    assert (run_dir / out["grid"]).is_file()
    assert out["psnr"] > 30 and out["label_accuracy"] == 1.0
    assert out["knowledge"] == {"bn_stats": "none", "labels": "restored", "batch_size": 1}


def test_fedsim_attack_rejects_bad_option_and_missing_capture(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    run_dir = tmp_path / "run"
    folder = run_dir / "captures" / "round_001"
    folder.mkdir(parents=True)
    (run_dir / "config.toml").write_text(cfg.to_toml())
    (folder / "server_client_000.pt").write_bytes(b"")
    (folder / "server_client_000.json").write_text(json.dumps(
        {"round": 1, "partition_id": 0, "observer": "server", "kind": "weights",
         "meta": {"image_shape": [1, 8, 8], "num_classes": 10}}))
    code = main(["attack", str(folder / "server_client_000.pt"), "--attack", "nope"])
    assert code == 2 and "attack.name 'nope'" in capsys.readouterr().err
    assert main(["attack", str(folder / "server_client_009.pt")]) == 2
    assert "no capture at" in capsys.readouterr().err


def test_missing_cifar_stops_before_any_work(tmp_path, capsys):
    exp_file = tmp_path / "c.toml"
    exp_file.write_text(f'output_dir = "{tmp_path / "runs"}"\n[data]\nname = "cifar10"\n'
                        f'root = "{tmp_path / "none"}"\n')
    assert main(["run", str(exp_file)]) == 2
    err = capsys.readouterr().err
    assert "cifar-10-batches-py" in err and "Unpack" in err
    assert not (tmp_path / "runs").exists()  # nothing started, no run folder


def test_a_failing_attack_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    import json

    from lab.orchestration import attacks as orchestration

    cfg = tiny_config(tmp_path, federation={"num_clients": 2, "algorithm": "fedsgd", "batch_size": 1},
                      attack={"enabled": True, "clients": [0, 1], "iterations": 5,
                              "group_size": 1})  # one at a time: attack_capture each
    run_dir = tmp_path / "run"
    for pid in (0, 1):
        save_capture(run_dir, local_capture(cfg, partition_id=pid))
    real = orchestration.attack_capture

    def flaky(cfg, path, run_dir, **kw):
        if "client_000" in str(path):
            raise MemoryError("out of memory")
        return real(cfg, path, run_dir, **kw)

    monkeypatch.setattr(orchestration, "attack_capture", flaky)
    results = orchestration.attack_run(cfg, run_dir, progress=False)
    rows = [json.loads(line) for line in (run_dir / "leakage.jsonl").read_text().splitlines()]
    assert [r.get("error") for r in rows] == ["MemoryError('out of memory')", None]
    assert rows[1]["partition_id"] == 1 and "psnr" in rows[1] and len(results) == 2


def test_reused_run_folder_is_refused_unless_overwritten(tmp_path):
    from fedsim.config import ConfigError
    from lab.orchestration.simulation import prepare_run_dir

    cfg = tiny_config(tmp_path)
    run_dir = tmp_path / "run"
    prepare_run_dir(cfg, run_dir)
    (run_dir / "metrics.jsonl").write_text('{"round": 0}\n')
    with pytest.raises(ConfigError, match="already holds files.*--overwrite"):
        prepare_run_dir(cfg, run_dir)
    prepare_run_dir(cfg, run_dir, overwrite=True)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.toml", "run.lock"]


def test_repeated_attack_keeps_both_results(tmp_path):
    cfg = tiny_config(tmp_path, federation={"algorithm": "fedsgd", "batch_size": 1})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(cfg.to_toml())
    path = save_capture(run_dir, local_capture(cfg))
    for _ in range(2):
        assert main(["attack", str(path), "--iterations", "3", "--attack",
                     "inverting_gradients"]) == 0
    names = sorted(p.name for p in (run_dir / "attacks").glob("*.json"))
    assert names == ["round_001_server_client_000_inverting_gradients.json",
                     "round_001_server_client_000_inverting_gradients_2.json"]
    rows = (run_dir / "leakage.jsonl").read_text().splitlines()
    assert len(rows) == 2


def test_broken_capture_files_get_one_line(tmp_path, capsys):
    cfg = tiny_config(tmp_path, federation={"algorithm": "fedsgd", "batch_size": 1})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(cfg.to_toml())
    path = save_capture(run_dir, local_capture(cfg))
    path.write_bytes(path.read_bytes()[:40])  # truncated tensor file
    assert main(["attack", str(path)]) == 2
    assert "not a readable capture tensor file" in capsys.readouterr().err
    path.with_suffix(".json").write_text("{not json")
    assert main(["attack", str(path)]) == 2
    assert "not a readable capture header" in capsys.readouterr().err


def test_a_capture_file_that_would_run_code_is_refused(tmp_path):
    """Captures load with torch.load(weights_only=True): a pickle that calls a function is
    refused with the file's name, and the function never runs."""
    import os

    import torch

    from fedsim.capture import CaptureError, load_capture

    cfg = tiny_config(tmp_path, federation={"algorithm": "fedsgd", "batch_size": 1})
    path = save_capture(tmp_path / "run", local_capture(cfg))
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": Exploit()}, path)
    with pytest.raises(CaptureError, match="not a readable capture tensor file"):
        load_capture(path)
    assert not marker.exists()


def test_failed_attacks_set_their_own_exit_status(capsys):
    from types import SimpleNamespace

    from lab.commands.common import exit_status

    ok = {"round": 1, "psnr": 12.0}
    assert exit_status(SimpleNamespace(client_failures={}, attacks=[ok])) == 0
    assert exit_status(SimpleNamespace(client_failures={2: 1}, attacks=[ok])) == 3
    failed = SimpleNamespace(client_failures={2: 1},
                             attacks=[ok, {"round": 3, "error": "MemoryError()"}])
    assert exit_status(failed) == 4
    assert "attack failures: 1 of 2 (rounds 3" in capsys.readouterr().err


def test_fedsim_attack_on_a_run_folder_attacks_every_scheduled_capture_grouped(tmp_path,
                                                                               capsys):
    """`fedsim attack RUN_DIR`: the scheduled captures (rounds 1, clients 0-2; client 3's
    capture is not scheduled), inverted in one group, one line counting them, exit 0; the
    rows name the group in their engine."""
    cfg = tiny_config(tmp_path, federation={"algorithm": "fedsgd", "batch_size": 1,
                                            "num_clients": 4},
                      attack={"tv_weight": 0.0, "signed": True, "lr": 0.3, "rounds": [1],
                              "clients": [0, 1, 2], "group_size": 3, "compile": "eager"})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(cfg.to_toml())
    for pid in range(4):
        save_capture(run_dir, local_capture(cfg, 1, pid))
    assert main(["attack", str(run_dir), "--iterations", "100"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"3 attacks: 3 scored, 0 failed, 0 skipped; rows in {run_dir / 'leakage.jsonl'}")
    rows = [json.loads(x) for x in (run_dir / "leakage.jsonl").read_text().splitlines()]
    assert sorted(r["partition_id"] for r in rows) == [0, 1, 2]
    assert all(r["engine"].endswith("+group3") for r in rows)
    assert min(r["psnr"] for r in rows) > 25  # batch 1, no TV: each digit comes back


def test_fedsim_attack_on_a_folder_that_is_not_a_run_folder_is_one_line(tmp_path, capsys):
    assert main(["attack", str(tmp_path)]) == 2
    assert "holds no config.toml: not a fedsim run folder" in capsys.readouterr().err
