"""`fedsim watch RUN_DIR`: the attacker worker, inverting a run folder's scheduled
captures as they land (the compose file's attacker service), and refreshing the run's
tables and report when an attack or a round is added, so the results volume holds them up
to the last round."""

from __future__ import annotations

from pathlib import Path

from fedsim.config import ConfigError, ExperimentConfig, load
from lab.commands.common import choices_of
from fedsim.run_folder import RunFolder

HELP = "the attacker worker: invert captures as they land"


def add_arguments(p) -> None:
    p.add_argument("run_dir", help="the run folder the apps write (RUN_DIR/config.toml)")
    p.add_argument("--device", choices=choices_of(ExperimentConfig, "device"))
    p.add_argument("--once", action="store_true", help="attack what is there, then exit")
    p.add_argument("--poll-s", type=float, default=5.0)


def run(args) -> int:
    """The attacker worker: invert a run folder's scheduled captures as they land."""
    import time

    from lab.orchestration.attacks import attack_one, targets

    from lab.orchestration.simulation import finish_files
    from lab.report import build_report
    from lab.stack import REPORT_LINE

    from fedsim.records import read_rows

    run_dir = Path(args.run_dir)
    # a restarted worker skips what earlier ones recorded
    done = {(r.get("observer"), r.get("round"), r.get("partition_id"))
            for r in read_rows(RunFolder(run_dir).leakage)} if run_dir.is_dir() else set()
    seen = -1  # metrics.jsonl's size at the last refresh: a new round refreshes the report
    while True:
        attacked = False
        cfg = None
        if RunFolder(run_dir).config.is_file():
            try:
                cfg = load(RunFolder(run_dir).config)
            except ConfigError:  # being written by the ServerApp: read it next time
                if args.once:
                    raise
        if cfg is not None:
            if args.device:
                cfg = cfg.model_copy(update={"device": args.device})
            for target in targets(cfg, run_dir, quiet=True):
                if target[:3] not in done:
                    done.add(target[:3])
                    attacked = True
                    rec = attack_one(cfg, *target, run_dir)
                    print(f"attack on round {target[1]} client {target[2]} by the {target[0]}: "
                          + (f"PSNR {rec['psnr']:.2f} dB" if "psnr" in rec
                             else f"skipped: {rec['skipped']}" if "skipped" in rec
                          else f"failed: {rec.get('error')}"), flush=True)
        metrics = RunFolder(run_dir).metrics
        grown = not args.once and metrics.is_file() and metrics.stat().st_size != seen
        if cfg is not None and metrics.is_file() and (attacked or grown):
            seen = metrics.stat().st_size  # tables and report of what is there
            rows = finish_files(run_dir)
            build_report(run_dir)
            print(REPORT_LINE.format(done=max((r["round"] for r in rows), default=0),
                                     total=cfg.federation.num_rounds), flush=True)
        if args.once:
            return 0
        time.sleep(args.poll_s)
