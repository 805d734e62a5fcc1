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


def test_stopped_sweep_resumes_with_the_remaining_cells(tmp_path):
    path = _file(tmp_path, "two", '[[sweep.cells]]\nlabel = "none"\ndefenses = []\n'
                 '[[sweep.cells]]\nlabel = "gradprune"\n'
                 'defenses = [{name = "gradprune", params = {p = 0.9}}]\n')
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lab.cli", "sweep", str(path), "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    first = out / "two" / "cells" / "00-none" / "done.json"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert first.exists(), proc.communicate()[0][-2000:]
    os.killpg(proc.pid, signal.SIGINT)  # stop it during the second cell
    out_text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out_text[-2000:]
    assert not (out / "two" / "cells" / "01-gradprune" / "done.json").exists()
    stamp = first.stat().st_mtime

    assert main(["sweep", str(path), "--output-dir", str(out)]) == 0
    assert first.stat().st_mtime == stamp  # the finished cell was not run again
    assert (out / "two" / "cells" / "01-gradprune" / "done.json").is_file()
    page = (out / "two" / "report.html").read_text()
    assert "data-points='2'" in page  # one point per cell in the trade-off scatter
    rows = (out / "two" / "sweep.csv").read_text().splitlines()
    assert len(rows) == 3 and all("finished" in r for r in rows[1:])
    assert json.loads((out / "two" / "cells.json").read_text())[1]["label"] == "gradprune"


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
