"""`fedsim run`: an experiment on Flower's simulation engine (Ray), then its summary."""

from __future__ import annotations

from pathlib import Path

from fedsim.config import load
from lab.commands.common import exit_status, lpips_text, quiet_flower

HELP = "run an experiment on Flower's simulation engine (Ray)"


def add_arguments(p) -> None:
    p.add_argument("config", nargs="?", help="experiment TOML (default: experiments/quick.toml)")
    p.add_argument("--run-dir", type=Path, help="write into this folder instead of a new one")
    p.add_argument("--overwrite", action="store_true",
                   help="with --run-dir: clear a folder that already holds a run")
    p.add_argument("--output-dir", help="parent folder of new run folders")
    p.add_argument("--ray-address", help="attach to an existing Ray cluster (e.g. auto)")
    p.add_argument("-v", "--verbose", action="store_true", help="show Flower's own log lines")


def print_summary(result) -> None:
    """Per round, accuracy beside the worst leakage so far; then each observer's figures."""
    from rich.console import Console
    from rich.table import Table

    from lab.report import summary_lines

    table = Table(title=f"fedsim run: {result.run_dir}")
    for col in ("round", "global accuracy", "global loss", "train loss", "clients",
                "worst PSNR so far"):
        table.add_column(col, justify="right")

    def num(r, key):
        return f"{r[key]:.4f}" if key in r else "-"

    scored = [(a["round"], a["psnr"], a["observer"]) for a in result.attacks if "psnr" in a]
    for r in result.rounds:
        clients = str(r.get("clients", "-")) + (f" ({r['failures']} failed)"
                                                if r.get("failures") else "")
        seen = [(psnr, obs) for rnd, psnr, obs in scored if rnd <= r["round"]]
        worst = f"{max(seen)[0]:.1f} dB ({max(seen)[1]})" if seen else "-"
        table.add_row(str(r["round"]), num(r, "global_accuracy"), num(r, "global_loss"),
                      num(r, "train_loss"), clients, worst)
    Console().print(table)
    for line in summary_lines(result.run_dir):
        print(line)


def attack_line(rec: dict, run_dir: Path) -> str:
    where = f"attack {rec['attack']} round {rec['round']} client {rec['partition_id']}"
    if "skipped" in rec:
        return f"{where}: skipped: {rec['skipped']}"
    if "error" in rec:
        return f"{where} failed: {rec['error']}"
    return (f"{where}: PSNR {rec['psnr']:.2f} dB  SSIM {rec['ssim']:.3f}  LPIPS "
            f"{lpips_text(rec)}  label accuracy {rec['label_accuracy']:.2f}  -> "
            f"{run_dir / rec['grid']}")


def run(args) -> int:
    from fedsim.runtime import stop_with_parent
    from lab.orchestration.simulation import run_experiment

    stop_with_parent()  # a sweep's cell stops with its sweep
    quiet_flower(args.verbose)
    cfg = load(args.config)
    if args.output_dir:
        cfg = cfg.model_copy(update={"output_dir": args.output_dir})
    result = run_experiment(cfg, run_dir=args.run_dir, ray_address=args.ray_address,
                            overwrite=args.overwrite)
    print_summary(result)
    for rec in result.attacks:
        print(attack_line(rec, result.run_dir))
    return exit_status(result)
