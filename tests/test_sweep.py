"""Sweeps: validated whole before any cell starts, resumable after a stop, and compared in
one report whose trade-off scatter has one point per cell."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fedsim.config import ConfigError
from fedsim.run_lock import holder
from lab.cli import main
from lab.sweep import load_sweep

BASE = """name = "{name}"
device = "cpu"
threads = 1
[data]
name = "digits"
[federation]
num_clients = 2
num_rounds = 1
algorithm = "fedsgd"
batch_size = 2
[attack]
enabled = true
iterations = 5
"""


def _file(tmp_path, name, sweep):
    path = tmp_path / f"{name}.toml"
    path.write_text(BASE.format(name=name) + sweep)
    return path


@pytest.mark.parametrize("sweep, needle", [
    ('[sweep]\n"federation.bogus" = [1, 2]\n', "sweep cell 0 (bogus=1)"),
    ('[sweep]\n"federation.batch_size" = []\n', "non-empty list"),
    ('[sweep]\n"federation.batch_size" = [1, 5000]\n', "sweep cell 1 (batch_size=5000)"),
    ('[[sweep.cells]]\nlabel = "ok"\n[[sweep.cells]]\nlabel = "bad"\n'
     'defenses = [{name = "nope"}]\n', "sweep cell 1 (bad)"),
    ('[sweep]\ncells = "abc"\n', "sweep.cells must be a list of tables"),
])
def test_a_bad_sweep_is_refused_before_any_cell_starts(tmp_path, capsys, sweep, needle):
    path = _file(tmp_path, "bad", sweep)
    with pytest.raises(ConfigError, match=re_escape(needle)):
        load_sweep(path)
    assert main(["sweep", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def re_escape(text):
    import re

    return re.escape(text)


def test_one_signal_stops_the_sweep_and_its_cell_and_a_resumed_sweep_redoes_it(tmp_path):
    """SIGINT to the sweep during its second of three cells (as a terminal's Ctrl-C: the
    cells run in process groups of their own): the running cell stops, is not marked done,
    the third never starts, one line says so; started again, the sweep skips the finished
    cell and redoes the stopped one from an empty folder."""
    path = _file(tmp_path, "three", '[[sweep.cells]]\nlabel = "none"\ndefenses = []\n'
                 '[[sweep.cells]]\nlabel = "gradprune"\n'
                 'defenses = [{name = "gradprune", params = {p = 0.9}}]\n'
                 '[[sweep.cells]]\nlabel = "mixup"\ndefenses = [{name = "mixup"}]\n')
    out = tmp_path / "out"
    cells = out / "three" / "cells"
    cmd = [sys.executable, "-m", "lab.cli", "sweep", str(path), "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    first = cells / "00-none" / "done.json"
    second = cells / "01-gradprune"
    deadline = time.time() + 300
    while not (second / "metrics.jsonl").exists() and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.2)
    assert first.exists() and (second / "metrics.jsonl").exists(), proc.communicate()[0][-2000:]
    os.killpg(proc.pid, signal.SIGINT)  # the sweep's group: the sweep alone
    out_text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out_text[-2000:]
    assert "Traceback" not in out_text
    assert ("sweep interrupted (SIGINT): cell 1 (gradprune) stopped, not marked done; "
            "1 cells not started") in out_text
    assert not (second / "done.json").exists() and holder(second) is None
    assert not list(cells.glob("02-*")), "the third cell ran after the signal"
    assert "interrupted (SIGINT)" in (cells / "01-gradprune.log").read_text()
    stamp = first.stat().st_mtime
    (second / "left-over").write_text("from the stopped attempt")

    assert main(["sweep", str(path), "--output-dir", str(out)]) == 0
    assert first.stat().st_mtime == stamp  # the finished cell was not run again
    assert (second / "done.json").is_file() and not (second / "left-over").exists()
    assert (cells / "02-mixup" / "done.json").is_file()
    page = (out / "three" / "report.html").read_text()
    assert "data-points='3'" in page  # one point per cell in the trade-off scatter
    rows = (out / "three" / "sweep.csv").read_text().splitlines()
    assert len(rows) == 4 and all("finished" in r for r in rows[1:])
    assert json.loads((out / "three" / "cells.json").read_text())[1]["label"] == "gradprune"


def test_a_killed_sweep_leaves_no_cell_behind_and_a_live_one_is_refused(tmp_path, capsys):
    """kill -9 of the sweep (a cell of 5,000 rounds): its running cell stops by itself (parent death: SIGTERM, a
    clean stop) instead of writing on as an orphan. A cell folder that a live process still
    holds makes a resumed sweep refuse, in one line naming the folder and the pid, before
    any cell starts."""
    path = _file(tmp_path, "long", '[sweep]\n"federation.num_rounds" = [5000]\n')
    out = tmp_path / "out"
    folder = out / "long" / "cells" / "00-num_rounds-5000"
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "sweep", str(path),
                             "--output-dir", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (folder / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    cell = holder(folder)
    assert cell is not None, "the cell never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 120
    while os.path.exists(f"/proc/{cell['pid']}") and time.time() < deadline:
        time.sleep(0.5)
    alive = os.path.exists(f"/proc/{cell['pid']}")
    if alive:
        os.killpg(cell["pid"], signal.SIGKILL)
    assert not alive, "the cell's fedsim run outlived its sweep"
    assert "interrupted (SIGTERM)" in (folder.parent / f"{folder.name}.log").read_text()
    assert holder(folder) is None

    code = ("import sys, time; from fedsim.run_lock import RunLock; RunLock(sys.argv[1]); "
            "print('held', flush=True); time.sleep(600)")
    other = subprocess.Popen([sys.executable, "-c", code, str(folder)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        log = (folder.parent / f"{folder.name}.log").read_text()
        assert main(["sweep", str(path), "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(folder) in err[0] and f"pid {other.pid}" in err[0]
        assert (folder.parent / f"{folder.name}.log").read_text() == log  # nothing started
    finally:
        other.kill()
        other.wait()


def test_cells_run_as_ray_tasks_on_a_cluster(tmp_path):
    """--ray-address: each cell is a Ray task on the cluster (here a head node the test
    starts on loopback, and stops by its own temp folder); each cell's run attaches to the
    same cluster, its clients' workers receive the experiment, and its attacks during
    training run there as tasks on the head's fedsim_attack resource."""
    import socket
    import tempfile

    from tests.helpers import stop_processes

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="rayc", dir="/tmp")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with open(tmp_path / "ray-start.log", "w") as log:  # no pipes: its daemons keep them
        subprocess.run(["ray", "start", "--head", f"--port={port}",
                        "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--num-cpus=2",
                        '--resources={"fedsim_attack": 1}',
                        "--include-dashboard=false"], env=env, check=True, stdout=log,
                       stderr=subprocess.STDOUT, timeout=120)
    try:
        path = _file(tmp_path, "onray", '[sweep]\n"federation.batch_size" = [1, 2]\n')
        out = tmp_path / "out"
        assert main(["sweep", str(path), "--output-dir", str(out), "--parallel", "2",
                     "--ray-address", f"127.0.0.1:{port}"]) == 0
        done = [json.loads(p.read_text()) for p in sorted(out.glob("onray/cells/*/done.json"))]
        assert [d["exit_status"] for d in done] == [0, 0]
        assert all(d["ray_node"] for d in done)  # each ran as a Ray task
        logs = "".join(p.read_text() for p in out.glob("onray/cells/*.log"))
        assert "attack" in logs and (out / "onray" / "report.html").is_file()
        assert "attacks run after training" not in logs  # they ran during, on the cluster
        for cell in sorted(out.glob("onray/cells/*/leakage.jsonl")):
            rows = [json.loads(line) for line in cell.read_text().splitlines()]
            assert rows and all("psnr" in r for r in rows)
    finally:
        stop_processes(temp)
