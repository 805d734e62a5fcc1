"""How Flower apps find the experiment: an environment variable or the Flower run config.

`fedsim run` puts the resolved config (TOML text) and the run folder in the environment,
which Ray workers inherit; `flwr run .` passes an experiment file path in the run config.
"""

from __future__ import annotations

import os
import time
from enum import IntEnum
from pathlib import Path
from typing import Any, Mapping, Optional

import tomllib

from fedsim.config import ExperimentConfig, from_dict, load

ENV_CONFIG = "FEDSIM_CONFIG_TOML"
ENV_RUN_DIR = "FEDSIM_RUN_DIR"
# For testing failure handling: "ROUND:PARTITION,..." makes those client rounds raise.
ENV_INJECT_FAULT = "FEDSIM_INJECT_CLIENT_FAULT"


def injected_fault(server_round: int, partition_id: int) -> None:
    """Raise if the environment asks this client round to fail (tests of failure handling;
    Ray workers inherit the variable from the driver)."""
    spec = os.environ.get(ENV_INJECT_FAULT, "")
    wanted = {tuple(int(v) for v in item.split(":")) for item in spec.split(",") if item}
    if (server_round, partition_id) in wanted:
        raise RuntimeError(f"injected fault ({ENV_INJECT_FAULT}) in round {server_round}, "
                           f"partition {partition_id}")

class Exit(IntEnum):
    """fedsim's exit statuses (README, "When things fail"); a signal is 128 + its number."""

    OK = 0
    FAILED = 1           # stopped midway, or could not start
    BAD_INPUT = 2        # refused before any work, one line naming the field or file
    CLIENT_FAILURES = 3  # finished, but clients failed in some rounds
    ATTACK_FAILURES = 4  # finished, but attacks raised


class RunFailed(RuntimeError):
    """The simulation ended before every round finished; the run folder keeps what did."""

    def __init__(self, message: str, run_dir=None):
        super().__init__(message)
        self.run_dir = run_dir


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the main thread was, so that `finally` blocks run;
    the CLI prints its message (one line) and exits 128 + the signal's number."""

    def __init__(self, signum: int, message: str = ""):
        import signal

        self.signum = int(signum)
        super().__init__(message or f"interrupted ({signal.Signals(signum).name})")

    @property
    def status(self) -> int:
        return 128 + self.signum


def raise_on_signals() -> dict:
    """From now on SIGINT and SIGTERM raise `Interrupted` in the main thread (elsewhere:
    nothing changes). Returns the handlers replaced, for `restore_signals`."""
    import signal
    import threading

    def interrupt(signum, _frame):
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}


def restore_signals(replaced: dict) -> None:
    import signal

    for sig, old in replaced.items():
        signal.signal(sig, old if old is not None else signal.SIG_DFL)


# Set by a parent (a sweep) to its pid: the child stops (SIGTERM) when the parent dies.
ENV_PARENT = "FEDSIM_STOP_WITH_PARENT"


def stop_with_parent() -> None:
    """A sweep's cell: have the kernel send SIGTERM when the sweep that started it dies,
    `kill -9` included (Linux), so that no orphan keeps writing into the cell's folder."""
    import signal
    import sys

    parent = os.environ.pop(ENV_PARENT, "")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(parent):  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def config_from_runtime(run_config: Optional[Mapping[str, Any]] = None) -> ExperimentConfig:
    text = os.environ.get(ENV_CONFIG)
    if text:
        return from_dict(tomllib.loads(text))
    path = (run_config or {}).get("experiment") or None
    return load(path)


def run_dir_from_runtime(cfg: ExperimentConfig) -> Path:
    given = os.environ.get(ENV_RUN_DIR)
    if given:
        return Path(given)
    return new_run_dir(cfg)


def new_run_dir(cfg: ExperimentConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output_dir) / f"{cfg.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    path.mkdir(parents=True)
    return path
