"""`fedsim evaluate RUN_DIR`: rebuild a run folder's tables; with --match-on or
--lpips-net, or LPIPS missing and now installed, re-score its attacks from the saved
reconstructions first (no re-attacking)."""

from __future__ import annotations

import sys
from pathlib import Path

from fedsim.config import MATCH_METRICS, ConfigError, EvaluationConfig, load
from lab.commands.common import choices_of
from fedsim.run_folder import RunFolder

HELP = "rebuild a run folder's leakage and round tables"


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="a run folder (RUN_DIR/config.toml)")
    p.add_argument("--match-on", choices=list(MATCH_METRICS),
                   help="re-score every attack, pairing on this metric")
    p.add_argument("--lpips-net", choices=choices_of(EvaluationConfig, "lpips_net"),
                   help="re-score every attack with this LPIPS backbone")


def run(args) -> int:
    from lab.evaluator import rescore
    from lab.tables import build_tables

    run_dir = Path(args.run_dir)
    if not RunFolder(run_dir).config.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.toml)")
    cfg = load(RunFolder(run_dir).config)
    net = args.lpips_net or cfg.evaluation.lpips_net
    if args.match_on or args.lpips_net or _lpips_to_fill(run_dir, net):
        rescore(run_dir, cfg, args.match_on or cfg.attack.match_on, net)
    leakage, rounds = build_tables(run_dir)
    print(f"{run_dir / 'leakage.csv'}: {len(leakage)} attacks; "
          f"{run_dir / 'rounds.csv'}: {len(rounds)} rounds")
    return 0


def _lpips_to_fill(run_dir: Path, net: str) -> bool:
    """Whether some scored attack lacks LPIPS and the backbone to fill it in is installed
    (an old run folder, or one scored before `fedsim lpips install`); says so when not."""
    from fedsim.metrics.lpips_weights import unavailable_reason
    from fedsim.records import read_rows

    rows = read_rows(RunFolder(run_dir).leakage)
    if not any("reconstruction" in r and r.get("lpips") is None for r in rows):
        return False
    reason = unavailable_reason(net)
    if reason:
        print(f"LPIPS not filled in: {reason}", file=sys.stderr)
    return reason is None
