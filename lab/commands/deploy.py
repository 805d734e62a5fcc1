"""`fedsim deploy FILE --local`: the experiment as a real Flower deployment, the topology
of docker-compose.yml as processes on loopback (lab/deploy.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from fedsim.config import ConfigError, load
from fedsim.runtime import Exit
from lab.commands.common import exit_status
from fedsim.run_folder import RunFolder

HELP = "run an experiment as a Flower deployment (docker-compose.yml's topology)"


def add_arguments(p) -> None:
    p.add_argument("config", help="experiment TOML")
    p.add_argument("--local", action="store_true", help="as processes on loopback")
    p.add_argument("--env-file", type=Path, help="deploy/tls.env, deploy/auth.env, ...")
    p.add_argument("--wire", action="store_true", help="put the eavesdropper proxy in the path")
    p.add_argument("--run-dir", type=Path)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--timeout-s", type=float, default=900)


def run(args) -> int:
    """The experiment as a real Flower deployment (docker-compose.yml's topology)."""
    import shutil

    from fedsim.records import read_rows
    from lab.deploy import DeployInterrupted, check_deployment, deploy_local
    from lab.orchestration.simulation import RunResult, finish_files, prepare_run_dir
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
    check_deployment(cfg, env_file=args.env_file, wire=args.wire)  # before any folder
    run_dir = prepare_run_dir(cfg, args.run_dir, args.overwrite)
    try:
        dep = deploy_local(cfg, run_dir, env_file=args.env_file, wire=args.wire,
                           timeout_s=args.timeout_s)
    except DeployInterrupted as stop:
        return _interrupted(stop, cfg, run_dir)
    rows = finish_files(run_dir)
    attacks = read_rows(RunFolder(run_dir).leakage)  # the attacker worker's
    report = build_report(run_dir)
    done = max((r["round"] for r in rows), default=0)
    print(f"deployed run: {done} of {cfg.federation.num_rounds} rounds in {dep.seconds:.1f} s; "
          f"report: {report}; processes' logs: {dep.folder}")
    if dep.wire is not None:
        print(f"wire: {dep.wire['captures']} captures decoded from "
              f"{dep.wire['http_exchanges']} HTTP exchanges, "
              f"{dep.wire['tls_connections']} TLS connections forwarded")
    if done < cfg.federation.num_rounds:
        print(f"the deployed run finished {done} of {cfg.federation.num_rounds} rounds",
              file=sys.stderr)
        return Exit.FAILED
    return exit_status(RunResult(run_dir, rows, attacks))


def _interrupted(stop, cfg, run_dir: Path) -> int:
    """Every process is stopped by now: finish the tables of the rounds done, one line."""
    import signal

    from lab.orchestration.simulation import finish_files

    # a second signal cuts nothing short
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        rows = finish_files(run_dir)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    done = max((r["round"] for r in rows), default=0)
    print(f"interrupted ({stop.name}): the deployment's processes are stopped; {done} of "
          f"{cfg.federation.num_rounds} rounds finished are in {run_dir} (logs in "
          f"{stop.folder})", file=sys.stderr, flush=True)
    return 128 + stop.signum
