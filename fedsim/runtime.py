"""How Flower apps find the experiment: an environment variable or the Flower run config.

`fedsim run` puts the resolved config (TOML text) and the run folder in the environment,
which Ray workers inherit; `flwr run .` passes an experiment file path in the run config.
"""

from __future__ import annotations

import os
import time
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

class RunFailed(RuntimeError):
    """The simulation ended before every round finished; the run folder keeps what did."""

    def __init__(self, message: str, run_dir=None):
        super().__init__(message)
        self.run_dir = run_dir


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
