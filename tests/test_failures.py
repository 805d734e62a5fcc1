"""Failures are loud: a client that fails is counted per round with its cause and sets the
exit status; a round below `federation.min_results` stops the run with one line, keeping
every round already finished."""

import json
import os
import signal
import subprocess
import time

import pytest

from lab.cli import main
from lab.orchestration.simulation import run_simulation
from fedsim.records import read_rows
from fedsim.runtime import ENV_INJECT_FAULT, RunFailed
from tests.helpers import processes, start_fedsim_run, tiny_config, wait_for_rows


def test_a_failed_client_is_counted_named_and_sets_the_exit_status(tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.setenv(ENV_INJECT_FAULT, "2:1")
    cfg = tiny_config(tmp_path, federation={"num_rounds": 3})
    path = tmp_path / "exp.toml"
    path.write_text(cfg.to_toml())
    run_dir = tmp_path / "run"
    assert main(["run", str(path), "--run-dir", str(run_dir)]) == 3
    assert "client failures: 1 in rounds 2" in capsys.readouterr().err
    rows = {r["round"]: r for r in read_rows(run_dir / "metrics.jsonl")}
    assert [rows[r]["failures"] for r in (1, 2, 3)] == [0, 1, 0]
    assert rows[2]["clients"] == 1 and "injected fault" in rows[2]["failure_causes"][0]
    assert "round 2: 1 of 2 clients failed" in (run_dir / "run.log").read_text()


def test_a_round_with_no_result_stops_the_run_and_keeps_the_rounds_before(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv(ENV_INJECT_FAULT, "2:0,2:1")
    cfg = tiny_config(tmp_path, federation={"num_rounds": 4})
    with pytest.raises(RunFailed, match=r"round 2: 0 of 2 clients returned a result.*"
                                        r"injected fault"):
        run_simulation(cfg)
    run_dir = next(tmp_path.glob("t-*"))
    rows = read_rows(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2] and "error" in rows[-1]
    assert (run_dir / "metrics.csv").read_text().count("\n") == 4  # header + 3 rows
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[1])["failures"] == 0


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_one_signal_stops_the_run_cleanly(tmp_path, sig, code):
    """As a terminal does: the signal goes to the whole process group, once. The run stops
    within seconds, keeps its finished rounds (CSV included), names its folder in one line,
    exits 128 + signal, and leaves none of its Ray processes behind."""
    cfg = tiny_config(tmp_path, federation={"num_rounds": 500, "local_steps": 1})
    proc, run_dir, ray_tmp = start_fedsim_run(cfg, tmp_path, "rsig")
    metrics = run_dir / "metrics.jsonl"
    assert wait_for_rows(proc, metrics, 3), proc.communicate()[0][-2000:]
    sent = time.time()
    os.killpg(proc.pid, sig)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run was still alive 60 s after one signal")
    assert proc.returncode == code, out[-2000:]
    assert time.time() - sent < 30
    assert f"interrupted ({sig.name})" in out and str(run_dir) in out
    assert "Traceback" not in out
    rows = read_rows(metrics)
    assert len(rows) >= 3
    assert (run_dir / "metrics.csv").read_text().count("\n") >= len(rows)
    deadline = time.time() + 10
    while processes(cmd_has=ray_tmp) and time.time() < deadline:
        time.sleep(0.5)
    assert processes(cmd_has=ray_tmp) == []


def test_a_client_worker_killed_mid_run_is_counted_and_the_run_goes_on(tmp_path):
    """SIGKILL one Ray ClientAppActor of a running `fedsim run` (found by the run's own
    RAY_TMPDIR in its environment): each round after it counts the failure with Ray's
    cause. Flower's engine puts the dead actor back in its pool, so which messages draw it
    is Flower's scheduling: either every later round runs with the other client (exit 3),
    or a round in which both messages drew it stops the run, naming the dead actor, with
    the rounds before it kept (exit 1)."""
    cfg = tiny_config(tmp_path, federation={"num_rounds": 6, "local_steps": 1})
    proc, run_dir, ray_tmp = start_fedsim_run(cfg, tmp_path, "rkill")
    metrics = run_dir / "metrics.jsonl"
    assert wait_for_rows(proc, metrics, 2), proc.communicate()[0][-2000:]
    actors = processes(cmd_starts="ray::ClientAppActor", env_has=ray_tmp)
    assert actors, "no ClientAppActor of this run was found"
    os.kill(actors[0][0], signal.SIGKILL)
    out, _ = proc.communicate(timeout=240)
    rows = read_rows(metrics)
    assert proc.returncode in (1, 3), out[-2000:]
    if proc.returncode == 3:
        failed = [r for r in rows if r.get("failures")]
        assert failed and all(r["clients"] == 1 for r in failed)
        assert rows[-1]["round"] == 6
        assert "actor" in failed[0]["failure_causes"][0].lower()
    else:
        assert "0 of 2 clients returned a result" in out and "actor is dead" in out, out[-2000:]
        stopped = rows[-1]
        assert "error" in stopped and "actor is dead" in stopped["error"], stopped
        kept = [r["round"] for r in rows[:-1]]
        assert kept == list(range(len(kept))) and len(kept) >= 2  # the rows seen before the kill
