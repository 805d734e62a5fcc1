"""The `fedsim` command line: parse, run, and turn every expected failure into one line and
an exit status. The library never imports it."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fedsim.config import ConfigError, load


def _print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

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


def cmd_run(args) -> int:
    from lab.orchestration.simulation import run_experiment

    _quiet_flower(args.verbose)
    cfg = load(args.config)
    if args.output_dir:
        cfg = cfg.model_copy(update={"output_dir": args.output_dir})
    result = run_experiment(cfg, run_dir=args.run_dir, ray_address=args.ray_address,
                            overwrite=args.overwrite)
    _print_summary(result)
    for rec in result.attacks:
        if "error" in rec:
            print(f"attack {rec['attack']} round {rec['round']} client {rec['partition_id']} "
                  f"failed: {rec['error']}")
            continue
        print(f"attack {rec['attack']} round {rec['round']} client {rec['partition_id']}: "
                  f"PSNR {rec['psnr']:.2f} dB  SSIM {rec['ssim']:.3f}  "
                  f"label accuracy {rec['label_accuracy']:.2f}  -> {result.run_dir / rec['grid']}")
    return exit_status(result)


def exit_status(result) -> int:
    """0 all finished; 3 clients failed; 4 attacks raised (each counted in one line)."""
    failures = result.client_failures
    if failures:
        print(f"client failures: {sum(failures.values())} in rounds "
              f"{', '.join(map(str, failures))} (causes in metrics.jsonl and run.log)",
              file=sys.stderr)
    failed_attacks = [rec for rec in result.attacks if "error" in rec]
    if failed_attacks:
        print(f"attack failures: {len(failed_attacks)} of {len(result.attacks)} (rounds "
              f"{', '.join(sorted({str(r['round']) for r in failed_attacks}))}; errors in "
              "leakage.jsonl and run.log)", file=sys.stderr)
        return 4
    return 3 if failures else 0


def cmd_attack(args) -> int:
    from fedsim.capture import read_header
    from fedsim.config import from_dict
    from lab.orchestration.attacks import attack_capture

    capture = Path(args.capture)
    if not (capture.with_suffix(".pt").is_file() and capture.with_suffix(".json").is_file()):
        raise ConfigError(f"no capture at {capture}: expected RUN_DIR/captures/round_RRR/"
                          "server_client_PPP.pt (or server_aggregate.pt)")
    run_dir = capture.parent.parent.parent
    header = read_header(capture)
    if args.model or header["meta"].get("app") == "foreign":
        return _attack_foreign(args, capture, header, run_dir)
    cfg = load(args.config or run_dir / "config.toml")
    overrides = {"name": args.attack, "iterations": args.iterations, "restarts": args.restarts,
                 "lr": args.lr, "tv_weight": args.tv_weight, "bn_weight": args.bn_weight,
                 "compile": args.compile}
    attack = {**cfg.attack.model_dump(), **{k: v for k, v in overrides.items() if v is not None},
              "enabled": True,  # so the attack's own config checks apply before any work
              "rounds": [header["round"]], "clients": [max(header["partition_id"], 0)]}
    knowledge = {"bn_stats": args.bn_stats, "labels": args.labels, "batch_size": args.batch_size}
    attack["knowledge"] = {**cfg.attack.knowledge.model_dump(),
                           **{k: v for k, v in knowledge.items() if v is not None}}
    data = cfg.to_dict()
    data["attack"] = attack
    if args.device:
        data["device"] = args.device
    from lab.validation import check_registries

    cfg = check_registries(from_dict(data))
    rec = attack_capture(cfg, capture, args.out or run_dir)
    print(f"PSNR {rec['psnr']:.2f} dB  SSIM {rec['ssim']:.3f}  RMSE {rec['rmse']:.3f}  "
          f"LPIPS {rec['lpips'] if rec['lpips'] is not None else 'unavailable'}  "
          f"label accuracy {rec['label_accuracy']:.2f}")
    print(f"grid: {Path(args.out or run_dir) / rec['grid']}")
    return 0


def _attack_foreign(args, capture: Path, header: dict, run_dir: Path) -> int:
    """A capture of your own app: your model factory, your originals if given."""
    from fedsim.config import AttackConfig
    from lab.foreign import ForeignSettings, attack_foreign
    from lab.orchestration.attacks import budget_of

    spec = args.model or header["meta"].get("facts", {}).get("model")
    if not spec:
        raise ConfigError(f"{capture} is a capture of a foreign app: give its model, "
                          "--model module:factory (a function returning your torch.nn.Module)")
    if (args.mean is None) != (args.std is None):
        raise ConfigError("--mean and --std go together (your pipeline's Normalize)")
    overrides = {"iterations": args.iterations, "restarts": args.restarts, "lr": args.lr,
                 "tv_weight": args.tv_weight, "bn_weight": args.bn_weight,
                 "compile": args.compile}
    attack_cfg = _validated(AttackConfig, {k: v for k, v in overrides.items() if v is not None})
    settings = ForeignSettings(
        model=spec, attack=args.attack, originals=args.originals, labels=args.labels,
        bn_stats=args.bn_stats or "none", batch_size=args.batch_size or "known",
        mean=args.mean, std=args.std, pixel_range=args.pixel_range,
        device=args.device or "auto", budget=budget_of(attack_cfg))
    rec = attack_foreign(capture, settings, args.out or run_dir)
    if "unscored" in rec:
        print(rec["unscored"])
    else:
        print(f"PSNR {rec['psnr']:.2f} dB  SSIM {rec['ssim']:.3f}  RMSE {rec['rmse']:.3f}  "
              f"LPIPS {rec['lpips'] if rec['lpips'] is not None else 'unavailable'}"
              + (f"  label accuracy {rec['label_accuracy']:.2f}" if "label_accuracy" in rec
                 else ""))
    print(f"grid: {Path(args.out or run_dir) / rec['grid']}")
    return 0


def _validated(model, data: dict):
    """A config section from CLI options, its errors as one ConfigError line."""
    from pydantic import ValidationError

    try:
        return model(**data)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None


def cmd_evaluate(args) -> int:
    """Rebuild a run folder's tables; with --match-on or --lpips-net, re-score its attacks
    from the saved reconstructions first (no re-attacking)."""
    from lab.evaluator import rescore
    from lab.tables import build_tables

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.toml)")
    cfg = load(run_dir / "config.toml")
    if args.match_on or args.lpips_net:
        rescore(run_dir, cfg, args.match_on or cfg.attack.match_on,
                args.lpips_net or cfg.evaluation.lpips_net)
    leakage, rounds = build_tables(run_dir)
    print(f"{run_dir / 'leakage.csv'}: {len(leakage)} attacks; "
          f"{run_dir / 'rounds.csv'}: {len(rounds)} rounds")
    return 0


def cmd_sweep(args) -> int:
    from lab.report import build_sweep_report
    from lab.sweep import run_sweep

    try:
        root, outcomes = run_sweep(Path(args.file), args.output_dir, args.scale, args.parallel,
                                   args.ray_address)
    except KeyboardInterrupt:
        print("sweep interrupted: finished cells are kept; run the same command to resume",
              file=sys.stderr)
        return 130
    report = build_sweep_report(root)
    failed = [o for o in outcomes if o["exit_status"] not in (0, 3)]
    print(f"sweep: {len(outcomes)} cells run now; report: {report}")
    for o in failed:
        print(f"cell {o['cell']} ({o['label']}) failed with exit status {o['exit_status']}; "
              f"see its log in {root / 'cells'}", file=sys.stderr)
    return 1 if failed else 0


def cmd_deploy(args) -> int:
    """The experiment as a real Flower deployment (docker-compose.yml's topology)."""
    import shutil

    from fedsim.records import read_rows
    from lab.deploy import deploy_local
    from lab.orchestration.simulation import _finish_files, prepare_run_dir
    from lab.report import build_report
    from lab.validation import validate

    cfg = validate(load(args.config))
    if not args.local:
        if shutil.which("docker") is None:
            raise ConfigError("no Docker engine here: `fedsim deploy --local` runs the same "
                              "topology as processes, or follow the README's docker compose "
                              "steps on a host with Docker")
        raise ConfigError("fedsim deploy drives the local topology only; with Docker, "
                          "follow the README's docker compose steps")
    run_dir = prepare_run_dir(cfg, args.run_dir, args.overwrite)
    dep = deploy_local(cfg, run_dir, env_file=args.env_file, wire=args.wire,
                       timeout_s=args.timeout_s)
    rows = _finish_files(run_dir)
    attacks = read_rows(run_dir / "leakage.jsonl")  # the attacker worker's
    report = build_report(run_dir)
    done = max((r["round"] for r in rows), default=0)
    print(f"deployed run: {done} of {cfg.federation.num_rounds} rounds in {dep.seconds:.1f} s; "
          f"report: {report}; processes' logs: {dep.folder}")
    if dep.wire is not None:
        print(f"wire: {dep.wire['captures']} captures decoded from "
              f"{dep.wire['http_exchanges']} HTTP exchanges, "
              f"{dep.wire['tls_connections']} TLS connections forwarded")
    failed = [a for a in attacks if "error" in a]
    if done < cfg.federation.num_rounds:
        print(f"the deployed run finished {done} of {cfg.federation.num_rounds} rounds",
              file=sys.stderr)
        return 1
    return 4 if failed else 0


def cmd_eavesdrop(args) -> int:
    """The wire proxy, until stopped."""
    import signal
    import threading

    from fedsim.app_facts import AppFacts
    from fedsim.reply_capture import ReplyCapture
    from fedsim.runtime import config_from_runtime
    from lab.wire import serve
    from server.capture import declared_facts

    import os

    from fedsim.runtime import ENV_CONFIG

    def writer() -> ReplyCapture:
        """The facts: --facts (your app), --config, the environment's experiment, or the
        run folder's config.toml (written by the ServerApp when the run starts)."""
        if args.facts:
            return ReplyCapture(args.out, AppFacts.from_toml(args.facts), observer="wire")
        if args.config or os.environ.get(ENV_CONFIG):
            cfg = load(args.config) if args.config else config_from_runtime()
        else:
            cfg = load(Path(args.out) / "config.toml")
        return ReplyCapture(args.out, declared_facts(cfg), observer="wire",
                            rounds=cfg.capture.rounds)

    if args.facts:
        AppFacts.from_toml(args.facts)  # a bad declaration: one line, before listening
    elif args.config:
        load(args.config)
    try:
        server = serve(args.listen, args.upstream, writer, Path(args.out) / "wire.json")
    except OSError as err:
        raise ConfigError(f"--listen {args.listen}: cannot listen there ({err.strerror})") from None
    print(f"eavesdropping on {args.listen} -> {args.upstream}; captures in {args.out}",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0


def cmd_certs(args) -> int:
    from lab.certs import make_certs

    for path in make_certs(Path(args.folder), tuple(args.host or ()), args.nodes):
        print(path)
    return 0


def cmd_watch(args) -> int:
    """The attacker worker: invert a run folder's scheduled captures as they land."""
    import time

    from lab.orchestration.attacks import attack_one, targets

    from lab.orchestration.simulation import _finish_files
    from lab.report import build_report

    from fedsim.records import read_rows

    run_dir = Path(args.run_dir)
    # a restarted worker skips what earlier ones recorded
    done = {(r.get("observer"), r.get("round"), r.get("partition_id"))
            for r in read_rows(run_dir / "leakage.jsonl")} if run_dir.is_dir() else set()
    while True:
        attacked = False
        cfg = None
        if (run_dir / "config.toml").is_file():
            try:
                cfg = load(run_dir / "config.toml")
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
                             else f"failed: {rec.get('error')}"), flush=True)
        if attacked and (run_dir / "metrics.jsonl").is_file():  # tables and report, updated
            _finish_files(run_dir)
            build_report(run_dir)
        if args.once:
            return 0
        time.sleep(args.poll_s)


def cmd_report(args) -> int:
    from lab.report import build_report
    from lab.tables import build_tables

    run_dir = Path(args.run_dir)
    if (run_dir / "cells.json").is_file():  # a sweep folder
        from lab.report import build_sweep_report

        print(f"report: {build_sweep_report(run_dir)}")
        return 0
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.toml) nor a sweep folder")
    build_tables(run_dir)
    print(f"report: {build_report(run_dir)}")
    return 0


def cmd_config(args) -> int:
    if args.action == "show":
        print(load(args.file).to_toml(), end="")
    else:
        from lab.validation import validate

        validate(load(args.file))
        print(f"{args.file}: ok")
    return 0


def _known_or_int(value: str):
    if value == "known":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected 'known' or an integer") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedsim", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment on Flower's simulation engine (Ray)")
    run.add_argument("config", nargs="?", help="experiment TOML (default: experiments/quick.toml)")
    run.add_argument("--run-dir", type=Path, help="write into this folder instead of a new one")
    run.add_argument("--overwrite", action="store_true",
                     help="with --run-dir: clear a folder that already holds a run")
    run.add_argument("--output-dir", help="parent folder of new run folders")
    run.add_argument("--ray-address", help="attach to an existing Ray cluster (e.g. auto)")
    run.add_argument("-v", "--verbose", action="store_true", help="show Flower's own log lines")
    run.set_defaults(func=cmd_run)

    att = sub.add_parser("attack", help="invert one saved capture and score it")
    att.add_argument("capture", help="RUN_DIR/captures/round_RRR/server_client_PPP.pt")
    att.add_argument("--config", help="experiment TOML (default: the run folder's config.toml)")
    att.add_argument("--attack", help="attack name (registry: attacker/attacks)")
    att.add_argument("--iterations", type=int)
    att.add_argument("--restarts", type=int)
    att.add_argument("--lr", type=float)
    att.add_argument("--tv-weight", type=float)
    att.add_argument("--bn-weight", type=float)
    att.add_argument("--bn-stats", choices=["exact", "inferred", "none"])
    att.add_argument("--labels", choices=["known", "restored", "optimised"])
    att.add_argument("--batch-size", type=_known_or_int, help="'known' or an assumed integer")
    att.add_argument("--device", choices=["auto", "cpu", "cuda"])
    att.add_argument("--compile", choices=["auto", "eager", "graph", "inductor", "cudagraph"],
                     help="how attack steps run (README, The attack engine)")
    att.add_argument("--out", type=Path, help="write results here instead of the run folder")
    att.add_argument("--model", help="your own model: module:factory (or file.py:factory) "
                     "returning the torch.nn.Module your app trains")
    att.add_argument("--originals", type=Path, help="your private batch, to score against: a "
                     "tensor file (images, or {images, labels}) or a folder of images")
    att.add_argument("--mean", type=float, nargs="+", help="your pipeline's Normalize mean "
                     "(default: the capture's declared facts)")
    att.add_argument("--std", type=float, nargs="+", help="your pipeline's Normalize std")
    att.add_argument("--pixel-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                     help="range of the images before normalisation (default: declared)")
    att.set_defaults(func=cmd_attack)

    ev = sub.add_parser("evaluate", help="rebuild a run folder's leakage and round tables")
    ev.add_argument("run_dir", help="a run folder (RUN_DIR/config.toml)")
    ev.add_argument("--match-on", choices=["psnr", "ssim", "rmse", "lpips"],
                    help="re-score every attack, pairing on this metric")
    ev.add_argument("--lpips-net", choices=["vgg", "alex"],
                    help="re-score every attack with this LPIPS backbone")
    ev.set_defaults(func=cmd_evaluate)

    sw = sub.add_parser("sweep", help="run a grid of experiments (resumes where it stopped)")
    sw.add_argument("file", help="sweep TOML: an experiment plus [sweep] lists / [[sweep.cells]]")
    sw.add_argument("--output-dir", help="parent of the sweep folder (default: output_dir)")
    sw.add_argument("--scale", help="apply the file's [scales.NAME] fields (e.g. paper)")
    sw.add_argument("--parallel", type=int, default=1, help="cells running at once")
    sw.add_argument("--ray-address", help="run every cell's clients and attacks on this cluster")
    sw.set_defaults(func=cmd_sweep)

    dep = sub.add_parser("deploy", help="run an experiment as a Flower deployment "
                         "(docker-compose.yml's topology)")
    dep.add_argument("config", help="experiment TOML")
    dep.add_argument("--local", action="store_true", help="as processes on loopback")
    dep.add_argument("--env-file", type=Path, help="deploy/tls.env, deploy/auth.env, ...")
    dep.add_argument("--wire", action="store_true", help="put the eavesdropper proxy in the path")
    dep.add_argument("--run-dir", type=Path)
    dep.add_argument("--overwrite", action="store_true")
    dep.add_argument("--timeout-s", type=float, default=900)
    dep.set_defaults(func=cmd_deploy)

    eav = sub.add_parser("eavesdrop", help="a forwarding proxy between SuperNodes and the "
                         "SuperLink that captures the updates it can read")
    eav.add_argument("--listen", required=True, help="HOST:PORT the SuperNodes connect to")
    eav.add_argument("--upstream", required=True, help="the SuperLink's HOST:PORT")
    eav.add_argument("--out", required=True, type=Path, help="run folder for the captures")
    eav.add_argument("--config", help="the experiment (default: FEDSIM_CONFIG_TOML, else the "
                     "run folder's config.toml once the run has started)")
    eav.add_argument("--facts", type=Path, help="your app's AppFacts as TOML, instead")
    eav.set_defaults(func=cmd_eavesdrop)

    cer = sub.add_parser("certs", help="make a CA and SuperLink certificate (and node keys)")
    cer.add_argument("folder", help="where to write them (deploy/certs for docker compose)")
    cer.add_argument("--host", action="append", help="another name of the SuperLink")
    cer.add_argument("--nodes", type=int, default=0, help="SuperNode key pairs to make")
    cer.set_defaults(func=cmd_certs)

    wat = sub.add_parser("watch", help="the attacker worker: invert captures as they land")
    wat.add_argument("run_dir", help="the run folder the apps write (RUN_DIR/config.toml)")
    wat.add_argument("--device", choices=["auto", "cpu", "cuda"])
    wat.add_argument("--once", action="store_true", help="attack what is there, then exit")
    wat.add_argument("--poll-s", type=float, default=5.0)
    wat.set_defaults(func=cmd_watch)

    rep = sub.add_parser("report", help="write a run folder's HTML and Markdown report")
    rep.add_argument("run_dir", help="a run folder (RUN_DIR/config.toml)")
    rep.set_defaults(func=cmd_report)

    conf = sub.add_parser("config", help="show the resolved config or check a file")
    conf.add_argument("action", choices=["show", "check"])
    conf.add_argument("file", nargs="?", help="experiment TOML (default: experiments/quick.toml)")
    conf.set_defaults(func=cmd_config)
    return p


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each line (not the stream of the
    moment it was made), so a replaced or closed stderr never breaks logging."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _setup_console_logging() -> None:
    """fedsim's progress lines on the terminal."""
    ours = logging.getLogger("fedsim")
    if not any(isinstance(h, _StderrHandler) for h in ours.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False


def _quiet_flower(verbose: bool) -> None:
    """Flower's own console lines only with --verbose (they always reach run.log). Only
    `fedsim run` imports Flower: attacking and scoring need neither Flower nor Ray, so they
    work on a GPU host that has only torch (../shared/notes/gpu.md)."""
    import flwr.common.logger  # noqa: F401  (creates Flower's console handler)

    logging.getLogger("flwr").propagate = False  # its own handlers only, not the root's
    for handler in logging.getLogger("flwr").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.INFO if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_console_logging()
    if getattr(args, "action", None) == "check" and not args.file:
        print("fedsim config check needs a FILE", file=sys.stderr)
        return 2
    from attacker.user_model import UserModelError
    from fedsim.app_facts import FactsError
    from fedsim.capture import CaptureError
    from fedsim.data.datasets import DataFormatError, DataNotFoundError
    from fedsim.runtime import RunFailed
    from lab.deploy import DeployError
    from lab.foreign import OriginalsError

    try:
        return args.func(args)
    except (ConfigError, DataNotFoundError, DataFormatError, CaptureError, UserModelError,
            OriginalsError, FactsError) as err:
        print(err, file=sys.stderr)
        return 2
    except (RunFailed, DeployError) as err:
        print(f"run failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
