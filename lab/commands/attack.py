"""`fedsim attack CAPTURE`: invert one saved capture and score it, a capture of a fedsim
run (its config.toml) or of your own Flower app (your --model, your --originals)."""

from __future__ import annotations

from pathlib import Path

from fedsim.config import ConfigError, EvaluationConfig, ExperimentConfig, KnowledgeConfig, load
from fedsim.run_folder import RunFolder
from lab.commands.common import (add_optimiser_options, choices_of, known_or_int, lpips_text,
                                 optimiser_overrides, validated)

HELP = "invert one saved capture and score it"


def add_arguments(p) -> None:
    p.add_argument("capture", help="RUN_DIR/captures/round_RRR/server_client_PPP.pt, or a "
                   "run folder: all its scheduled captures, grouped (attack.group_size)")
    p.add_argument("--config", help="experiment TOML (default: the run folder's config.toml)")
    from attacker.attacks import ATTACKS

    p.add_argument("--attack", help=f"one of {', '.join(sorted(ATTACKS))} (checked with the "
                   "config, one line naming attack.name; default: the run's config.toml)")
    add_optimiser_options(p)
    p.add_argument("--bn-stats", choices=choices_of(KnowledgeConfig, "bn_stats"))
    p.add_argument("--labels", choices=choices_of(KnowledgeConfig, "labels"))
    p.add_argument("--batch-size", type=known_or_int, help="'known' or an assumed integer")
    p.add_argument("--device", choices=choices_of(ExperimentConfig, "device"))
    p.add_argument("--out", type=Path, help="write results here instead of the run folder")
    p.add_argument("--model", help="your own model: module:factory (or file.py:factory) "
                   "returning the torch.nn.Module your app trains")
    p.add_argument("--originals", type=Path, help="your private batch, to score against: a "
                   "tensor file (images, or {images, labels}) or a folder of images")
    p.add_argument("--mean", type=float, nargs="+", help="your pipeline's Normalize mean: "
                   "one number for every channel, or one per channel (default: the "
                   "capture's declared facts)")
    p.add_argument("--std", type=float, nargs="+", help="your pipeline's Normalize std "
                   "(one number, or one per channel)")
    p.add_argument("--pixel-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="range of the images before normalisation (default: declared)")


def scores_line(rec: dict) -> str:
    return (f"PSNR {rec['psnr']:.2f} dB  SSIM {rec['ssim']:.3f}  RMSE {rec['rmse']:.3f}  "
            f"LPIPS {lpips_text(rec)}"
            + (f"  label accuracy {rec['label_accuracy']:.2f}" if "label_accuracy" in rec
               else ""))


def run(args) -> int:
    from fedsim.capture import read_header
    from fedsim.config import from_dict
    from lab.orchestration.attacks import attack_capture
    from lab.validation import check_registries

    capture = Path(args.capture)
    if capture.is_dir():
        return _attack_run_dir(args, capture)
    if not (capture.with_suffix(".pt").is_file() and capture.with_suffix(".json").is_file()):
        raise ConfigError(f"no capture at {capture}: expected RUN_DIR/captures/round_RRR/"
                          "server_client_PPP.pt (or server_aggregate.pt)")
    run_dir = capture.parent.parent.parent
    header = read_header(capture)
    if args.model or header["meta"].app == "foreign":
        return _attack_foreign(args, capture, header, run_dir)
    cfg = load(args.config or RunFolder(run_dir).config)
    overrides = {**optimiser_overrides(args), **({"name": args.attack} if args.attack else {})}
    attack = {**cfg.attack.model_dump(), **overrides,
              "enabled": True,  # so the attack's own config checks apply before any work
              "rounds": [header["round"]], "clients": [max(header["partition_id"], 0)]}
    knowledge = {"bn_stats": args.bn_stats, "labels": args.labels, "batch_size": args.batch_size}
    attack["knowledge"] = {**cfg.attack.knowledge.model_dump(),
                           **{k: v for k, v in knowledge.items() if v is not None}}
    data = cfg.to_dict()
    data["attack"] = attack
    if args.device:
        data["device"] = args.device
    cfg = check_registries(from_dict(data))
    rec = attack_capture(cfg, capture, args.out or run_dir)
    if "skipped" in rec:
        print(f"skipped: {rec['skipped']}")
        return 0
    print(scores_line(rec))
    print(f"grid: {Path(args.out or run_dir) / rec['grid']}")
    return 0


def _attack_foreign(args, capture: Path, header: dict, run_dir: Path) -> int:
    """A capture of your own app: your model factory, your originals if given."""
    from attacker.problem import budget_of
    from fedsim.config import AttackConfig
    from lab.foreign import ForeignSettings, attack_foreign, whose

    if not args.model:  # never from the capture: a file being attacked names no code to run
        named = header["meta"].app_facts.get("model")
        hint = (f"; the capture suggests {str(named)[:200]!r}, which fedsim does not import "
                "for you: pass it as --model if you trust it") if named else ""
        raise ConfigError(f"{capture} is a capture of a foreign app: give its model, "
                          "--model module:factory (a function returning your "
                          f"torch.nn.Module){hint}")
    attack_cfg = validated(AttackConfig, optimiser_overrides(args))
    settings = ForeignSettings(
        model=args.model, attack=args.attack, originals=args.originals, labels=args.labels,
        bn_stats=args.bn_stats or KnowledgeConfig().bn_stats,
        batch_size=args.batch_size or "known",
        mean=_one_or_each(args.mean), std=_one_or_each(args.std),
        pixel_range=args.pixel_range, device=args.device or "auto",
        lpips_net=EvaluationConfig().lpips_net, budget=budget_of(attack_cfg))
    rec = attack_foreign(capture, settings, args.out or run_dir)
    print(whose(rec))
    print(rec["unscored"] if "unscored" in rec else scores_line(rec))
    print(f"grid: {Path(args.out or run_dir) / rec['grid']}")
    return 0


def _one_or_each(values):
    """--mean 0.45: one number for every channel, as AppFacts(mean=0.45); several: one each."""
    return values[0] if values is not None and len(values) == 1 else values


def _attack_run_dir(args, run_dir: Path) -> int:
    """Every scheduled capture of a run folder, captures of one problem shape inverted
    together (`lab.orchestration.attacks.attack_grouped`); exit 4 if any attack failed."""
    from fedsim.config import from_dict
    from fedsim.runtime import Exit
    from lab.orchestration.attacks import attack_run
    from lab.validation import check_registries

    if not RunFolder(run_dir).config.is_file() and not args.config:
        raise ConfigError(f"{run_dir} holds no config.toml: not a fedsim run folder")
    cfg = load(args.config or RunFolder(run_dir).config)
    data = cfg.to_dict()
    data["attack"] = {**cfg.attack.model_dump(), **optimiser_overrides(args), "enabled": True,
                      **({"name": args.attack} if args.attack else {})}
    if args.device:
        data["device"] = args.device
    rows = attack_run(check_registries(from_dict(data)), run_dir, progress=False)
    failed = [r for r in rows if "error" in r]
    done = [r for r in rows if "psnr" in r]
    print(f"{len(rows)} attacks: {len(done)} scored, {len(failed)} failed, "
          f"{len(rows) - len(done) - len(failed)} skipped; rows in {run_dir / 'leakage.jsonl'}")
    return Exit.ATTACK_FAILURES if failed else Exit.OK
