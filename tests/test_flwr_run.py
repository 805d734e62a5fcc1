"""The README's `flwr run . local` route: it runs as written, and a federation with fewer
SuperNodes than the experiment's clients ends with one line instead of waiting forever.
Every Flower process the test starts (its local SuperLink outlives `flwr run`) is stopped
by the test, found by the test's own FLWR_HOME in its command line."""

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import processes

ROOT = Path(__file__).resolve().parents[1]


def _experiment(tmp_path, clients: int, timeout_s: float = 120) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(f'''name = "flwr"
device = "cpu"
output_dir = "{tmp_path / "runs"}"
[federation]
num_clients = {clients}
num_rounds = 2
algorithm = "fedavg"
local_steps = 1
connect_timeout_s = {timeout_s}
''')
    return path


def _stop_flower(home: str) -> None:
    for _ in range(20):
        pids = [pid for pid, _ in processes(cmd_has=home)]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


@pytest.fixture
def flwr(tmp_path):
    home = tempfile.mkdtemp(prefix="flwrhome", dir="/tmp")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("FEDSIM_")},
           "FLWR_HOME": home, "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}

    def run(experiment: Path, supernodes: int, timeout: float = 240):
        cmd = ["flwr", "run", ".", "local", "--stream", "--federation-config",
               f"num-supernodes={supernodes}", "--run-config", f'experiment="{experiment}"']
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)

    yield run
    _stop_flower(home)


def test_flwr_run_as_the_readme_says(tmp_path, flwr):
    done = flwr(_experiment(tmp_path, clients=2), supernodes=2)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3  # the initial model and 2 rounds


def test_too_few_supernodes_end_with_one_line(tmp_path, flwr):
    started = time.time()
    done = flwr(_experiment(tmp_path, clients=3, timeout_s=5), supernodes=2)
    out = done.stdout + done.stderr
    assert "num-supernodes=3" in out and "2 connected within 5 s" in out
    assert time.time() - started < 120
