"""`fedsim report DIR`: a run folder's (or a sweep folder's) HTML and Markdown report."""

from __future__ import annotations

from pathlib import Path

from fedsim.config import ConfigError
from fedsim.run_folder import RunFolder

HELP = "write a run folder's HTML and Markdown report"


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a run folder (RUN_DIR/config.toml) or a sweep folder")


def run(args) -> int:
    from lab.report import build_report, build_sweep_report
    from lab.tables import build_tables

    run_dir = Path(args.run_dir)
    if (run_dir / "cells.json").is_file():  # a sweep folder
        print(f"report: {build_sweep_report(run_dir)}")
        return 0
    if not RunFolder(run_dir).config.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.toml) nor a sweep folder")
    build_tables(run_dir)
    print(f"report: {build_report(run_dir)}")
    return 0
