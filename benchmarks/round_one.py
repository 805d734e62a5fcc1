"""A run folder holding every client's round-1 capture of a config, made in-process (no
Flower): what the attack benchmarks invert with `lab.orchestration.attacks.attack_run`."""

from __future__ import annotations

from pathlib import Path

from fedsim.capture import save_capture
from fedsim.config import ExperimentConfig
from fedsim.run_folder import RunFolder
from lab.orchestration.inprocess import local_capture


def round_one_captures(cfg: ExperimentConfig, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True)
    RunFolder(run_dir).config.write_text(cfg.to_toml())
    for pid in range(cfg.federation.num_clients):
        save_capture(run_dir, local_capture(cfg, 1, pid))
    return run_dir
