"""`fedsim sweep FILE`: a grid of experiments that runs unattended and resumes."""

from __future__ import annotations

import sys
from pathlib import Path

from fedsim.runtime import Exit
from lab.sweep import FINISHED

HELP = "run a grid of experiments (resumes where it stopped)"


def add_arguments(p) -> None:
    p.add_argument("file", help="sweep TOML: an experiment plus [sweep] lists / [[sweep.cells]]")
    p.add_argument("--output-dir", help="parent of the sweep folder (default: output_dir)")
    p.add_argument("--scale", help="apply the file's [scales.NAME] fields (e.g. paper)")
    p.add_argument("--parallel", type=int, default=1, help="cells running at once")
    p.add_argument("--ray-address", help="run every cell's clients and attacks on this cluster")


def run(args) -> int:
    from lab.report import build_sweep_report
    from lab.sweep import run_sweep

    root, outcomes = run_sweep(Path(args.file), args.output_dir, args.scale, args.parallel,
                               args.ray_address)  # a signal: Interrupted, said by main()
    report = build_sweep_report(root)
    failed = [o for o in outcomes if o["exit_status"] not in FINISHED]
    print(f"sweep: {len(outcomes)} cells run now; report: {report}")
    for o in failed:
        print(f"cell {o['cell']} ({o['label']}) failed with exit status {o['exit_status']}; "
              f"see its log in {root / 'cells'}", file=sys.stderr)
    return Exit.FAILED if failed else Exit.OK
