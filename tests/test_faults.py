"""Faults around a run: a full disk, records cut short, two writers on one run folder, and
signals outside the rounds (while Ray starts, during the attacks after training, during
`fedsim attack`). Each ends in one line and the right exit status, keeping what finished."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fedsim.records import DiskFull, RecordsError, append_row, read_rows
from fedsim.run_lock import RunFolderBusy, RunLock, holder
from lab.cli import main
from tests.helpers import processes, start_fedsim_run, tiny_config, wait_for_rows


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (needs root), unmounted afterwards."""
    folder = tmp_path / "disk"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs to fill: {done.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder, leave: int) -> None:
    """Fill `folder`'s file system up to `leave` bytes."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(free - leave, 0))


def _output(proc) -> str:
    return proc.communicate(timeout=240)[0]


def _holder_process(folder):
    """Another process that holds `folder`'s run lock until killed."""
    code = ("import sys, time; from fedsim.run_lock import RunLock; RunLock(sys.argv[1]); "
            "print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ---- a full disk


def test_a_row_that_does_not_fit_is_taken_back_and_named_in_one_line(small_disk):
    path = small_disk / "metrics.jsonl"
    append_row(path, {"round": 0})
    _fill(small_disk, 2000)
    with pytest.raises(DiskFull, match=rf"no space left on device writing {path}: \d+ bytes "
                                        "free"):
        append_row(path, {"round": 1, "blob": "x" * 20000})
    assert path.read_text() == '{"round": 0}\n'  # whole lines only
    assert read_rows(path) == [{"round": 0}]


def test_run_log_on_a_full_disk_says_so_once(small_disk, capsys):
    import logging

    from fedsim.records import RunLogHandler

    handler = RunLogHandler(small_disk / "run.log")
    logger = logging.getLogger("fedsim.test_full_disk")
    logger.addHandler(handler)
    logger.propagate = False
    _fill(small_disk, 0)
    try:
        for i in range(200):
            logger.warning("line %d %s", i, "y" * 500)
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert "Logging error" not in err
    assert err.count("no space left on device writing") == 1 and "run.log" in err


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_what_it_wrote(tmp_path, small_disk):
    """3 MB fill up within a few rounds of captures: the run stops at the first write that
    fails, in one line naming the file and the free space (no traceback, no flood of
    logging errors), exit 1; every record written before is whole, and once there is space
    again `fedsim evaluate` and `fedsim report` read the folder."""
    cfg = tiny_config(tmp_path, federation={"num_rounds": 40, "local_steps": 1},
                      capture={"rounds": "all"})
    path = tmp_path / "exp.toml"
    path.write_text(cfg.to_toml())
    run_dir = small_disk / "run"
    env = {k: v for k, v in os.environ.items() if k != "FEDSIM_INJECT_CLIENT_FAULT"}
    done = subprocess.run([sys.executable, "-m", "lab.cli", "run", str(path), "--run-dir",
                           str(run_dir)], env=env, capture_output=True, text=True,
                          timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "Traceback" not in out and "Logging error" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if "no space left on device" in line]
    assert len(lines) == 1 and str(run_dir) in lines[0] and "bytes free" in lines[0], out
    assert "rounds before it are kept" in lines[0]
    rows = read_rows(run_dir / "metrics.jsonl")
    text = (run_dir / "metrics.jsonl").read_text()
    assert rows and text.endswith("\n") and len(text.splitlines()) == len(rows)
    assert rows[-1]["round"] < 40
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    assert main(["evaluate", str(run_dir)]) == 0
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file()


# ---- records cut short


def _run_folder(tmp_path, torn: str):
    cfg = tiny_config(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(cfg.to_toml())
    rows = [{"round": r, "global_accuracy": 0.5, "global_loss": 1.0, "clients": 2,
             "failures": 0} for r in range(3)]
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + torn)
    return run_dir


def test_evaluate_and_report_skip_a_last_line_cut_short_with_one_warning(tmp_path, capsys):
    run_dir = _run_folder(tmp_path, '{"round": 3, "global_acc')
    assert main(["evaluate", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert err.count("line 4 was cut short") == 1 and "metrics.jsonl" in err
    assert (run_dir / "rounds.csv").read_text().count("\n") == 4  # header + rounds 0-2
    assert main(["report", str(run_dir)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_broken_line_in_the_middle_is_an_error_in_one_line(tmp_path, capsys):
    run_dir = _run_folder(tmp_path, "")
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:10]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordsError, match="line 2 is not a JSON row"):
        read_rows(path)
    assert main(["evaluate", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.jsonl: line 2" in err[0]


# ---- one run per folder


def test_overwrite_clears_only_a_fedsim_run_folder(tmp_path):
    from fedsim.config import ConfigError
    from lab.orchestration.simulation import claim_run_dir

    cfg = tiny_config(tmp_path)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="neither empty nor a fedsim run folder"):
        claim_run_dir(cfg, folder, overwrite=True)
    assert (folder / "thesis.tex").read_text() == "years of work"
    assert not (folder / "run.lock").exists()
    (folder / "config.toml").write_text("[superlink]\naddress = 1\n")  # not fedsim's
    with pytest.raises(ConfigError, match="neither empty nor a fedsim run folder"):
        claim_run_dir(cfg, folder, overwrite=True)

    run_dir, lock = claim_run_dir(cfg, tmp_path / "run")
    (run_dir / "metrics.jsonl").write_text('{"round": 0}\n')
    lock.release()
    run_dir, lock = claim_run_dir(cfg, run_dir, overwrite=True)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.toml", "run.lock"]
    lock.release()
    assert not (run_dir / "run.lock").exists()


def test_a_folder_another_process_writes_is_refused_and_a_dead_ones_lock_is_taken_over(
        tmp_path, capsys, caplog):
    cfg = tiny_config(tmp_path)
    path = tmp_path / "exp.toml"
    path.write_text(cfg.to_toml())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(cfg.to_toml())
    (run_dir / "metrics.jsonl").write_text('{"round": 0}\n')
    other = _holder_process(run_dir)
    try:
        assert holder(run_dir)["pid"] == other.pid
        assert main(["run", str(path), "--run-dir", str(run_dir), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"being written by another run (pid {other.pid}" in err[0]
        assert (run_dir / "metrics.jsonl").read_text() == '{"round": 0}\n'  # untouched
        with pytest.raises(RunFolderBusy):
            RunLock(run_dir)
    finally:
        other.kill()  # as kill -9: its lock file stays, nobody holds it
        other.wait()
    assert (run_dir / "run.lock").exists() and holder(run_dir) is None
    with caplog.at_level("WARNING", logger="fedsim"):
        lock = RunLock(run_dir)
    assert f"pid {other.pid}" in caplog.text and "no longer running" in caplog.text
    assert json.loads((run_dir / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_a_second_run_on_a_running_folder_is_refused_and_the_lock_ends_with_the_run(
        tmp_path, capsys):
    """Two real runs: the second `fedsim run --overwrite` on the folder of one still going
    is refused in one line naming its pid, rows do not mix; the first, stopped by SIGTERM,
    releases its lock."""
    cfg = tiny_config(tmp_path, federation={"num_rounds": 500, "local_steps": 1})
    proc, run_dir, _ray_tmp = start_fedsim_run(cfg, tmp_path, "rlock")
    metrics = run_dir / "metrics.jsonl"
    try:
        assert wait_for_rows(proc, metrics, 2), _output(proc)[-2000:]
        assert main(["run", str(tmp_path / "exp.toml"), "--run-dir", str(run_dir),
                     "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"pid {proc.pid}" in err and "being written by another run" in err
        assert (run_dir / "config.toml").is_file()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
    out = _output(proc)
    assert proc.returncode == 143, out[-2000:]
    rounds = [r["round"] for r in read_rows(metrics)]
    assert rounds == list(range(len(rounds)))  # one run's rows, in order
    assert not (run_dir / "run.lock").exists()


# ---- signals outside the rounds


RAY_START_SIGNAL = """
import os, signal, sys, threading, time
import ray
real_init = ray.init

def signal_once_ray_starts(*args, **kwargs):
    def later():  # once Ray's first process is up, while ray.init is still going
        tmp = os.environ["RAY_TMPDIR"]
        while not any(tmp in open(f"/proc/{p}/cmdline", "rb").read().decode(errors="ignore")
                      for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/cmdline")):
            time.sleep(0.05)
        os.kill(os.getpid(), int(os.environ["SIG"]))
    threading.Thread(target=later, daemon=True).start()
    return real_init(*args, **kwargs)

ray.init = signal_once_ray_starts
from lab.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_ray_starts_stops_the_run_in_one_line(tmp_path, sig, code):
    import tempfile

    cfg = tiny_config(tmp_path)
    path = tmp_path / "exp.toml"
    path.write_text(cfg.to_toml())
    ray_tmp = tempfile.mkdtemp(prefix="rstart", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "SIG": str(int(sig))}
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", RAY_START_SIGNAL, "run", str(path),
                           "--run-dir", str(run_dir)], env=env, capture_output=True,
                          text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert f"interrupted ({sig.name}) while Ray was starting" in out and str(run_dir) in out
    assert not (run_dir / "run.lock").exists()
    deadline = time.time() + 15
    while processes(cmd_has=ray_tmp) and time.time() < deadline:
        time.sleep(0.5)
    assert processes(cmd_has=ray_tmp) == []


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_the_attacks_after_training_keeps_the_finished_ones(tmp_path, sig,
                                                                           code):
    cfg = tiny_config(tmp_path, federation={"num_rounds": 2, "batch_size": 2,
                                            "local_steps": 1},
                      attack={"enabled": True, "when": "after", "rounds": "all",
                              "clients": "all", "iterations": 60, "compile": "eager"})
    proc, run_dir, _ray_tmp = start_fedsim_run(cfg, tmp_path, "ratt")
    leakage = run_dir / "leakage.jsonl"
    assert wait_for_rows(proc, leakage, 1, timeout_s=400), _output(proc)[-3000:]
    os.killpg(proc.pid, sig)
    out = _output(proc)
    assert proc.returncode == code, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert f"interrupted ({sig.name}) after training" in out and str(run_dir) in out
    rows = read_rows(leakage)
    assert 1 <= len(rows) < 4 and all("psnr" in r for r in rows)
    assert (run_dir / "leakage.csv").read_text().count("\n") == len(rows) + 1
    assert not (run_dir / "run.lock").exists()


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_fedsim_attack_ends_it_in_one_line(tmp_path, sig, code):
    from fedsim.capture import save_capture
    from lab.orchestration.inprocess import local_capture

    cfg = tiny_config(tmp_path, federation={"algorithm": "fedsgd", "batch_size": 1})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(cfg.to_toml())
    capture = save_capture(run_dir, local_capture(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "attack", str(capture),
                             "--iterations", "1000000", "--compile", "eager"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    seen = b""
    while b"loss=" not in seen and proc.poll() is None:  # the progress bar: attacking now
        seen += os.read(proc.stdout.fileno(), 4096)
    os.killpg(proc.pid, sig)
    out = (seen + proc.communicate(timeout=120)[0]).decode(errors="replace")
    assert proc.returncode == code, out[-3000:]
    assert "Traceback" not in out and f"interrupted ({sig.name})" in out, out[-3000:]
