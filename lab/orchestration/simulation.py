"""`fedsim run`: one experiment on Flower's simulation engine, each client a Ray worker.

We start Ray ourselves (local, or attached to a cluster by address) so that every worker
receives the experiment through its environment; Flower then reuses that Ray instance.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fedsim.config import ExperimentConfig
from fedsim.records import read_rows, write_csv
from fedsim.runtime import ENV_CONFIG, ENV_RUN_DIR, FLOWER_ENV, RunFailed, new_run_dir

log = logging.getLogger("fedsim")

ATTACK_RESOURCE = "fedsim_attack"  # Ray resource that attack tasks hold while they run


@dataclass
class RunResult:
    run_dir: Path
    rounds: list[dict]
    attacks: list[dict] = field(default_factory=list)
    attacks_deferred: bool = False  # "during" asked for, but the cluster could not host them

    @property
    def client_failures(self) -> dict[int, int]:
        """Failed clients per round, for the rounds that had any."""
        return {r["round"]: r["failures"] for r in self.rounds if r.get("failures")}


def prepare_run_dir(cfg: ExperimentConfig, run_dir: Path | None = None,
                    overwrite: bool = False) -> Path:
    """A new run folder, or the given one: refused when it already holds a run (rows would
    mix and captures be replaced), unless `overwrite` clears it first."""
    if run_dir is not None and Path(run_dir).exists() and any(Path(run_dir).iterdir()):
        if not overwrite:
            from fedsim.config import ConfigError

            raise ConfigError(f"--run-dir {run_dir} already holds files: pick a new folder, "
                              "or pass --overwrite to clear it first")
        import shutil

        shutil.rmtree(run_dir)
    run_dir = Path(run_dir) if run_dir else new_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(cfg.to_toml())
    return run_dir


def _attach_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("fedsim", "flwr"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    return handler


def _finish_files(run_dir: Path) -> list[dict]:
    """The tables as far as the run got: metrics.csv, leakage.csv and rounds.csv."""
    from lab.tables import build_tables

    rows = read_rows(run_dir / "metrics.jsonl")
    write_csv(run_dir / "metrics.csv", rows)
    build_tables(run_dir)
    return rows


def _stop_on_signals(run_dir: Path) -> dict:
    """One Ctrl-C (SIGINT) or SIGTERM ends the run within seconds: the files of the rounds
    already done are finished (CSV included), the Ray processes this run started are shut
    down, one line names the run folder, and the process exits 130 or 143. Flower's
    simulation runs the ServerApp in a thread that a KeyboardInterrupt would leave waiting,
    so the handler ends the process itself. Returns the handlers it replaced."""
    import signal

    def stop(signum, _frame):
        import ray

        name = signal.Signals(signum).name
        log.error("%s: stopping the run", name)
        for logger in (logging.getLogger("flwr"), logging.getLogger()):
            for handler in logger.handlers:  # in-flight messages now fail: run.log keeps
                if not isinstance(handler, logging.FileHandler):  # their lines, not the
                    handler.setLevel(logging.CRITICAL + 1)        # terminal
        try:
            _finish_files(run_dir)
        finally:
            ray.shutdown()
            print(f"interrupted ({name}): the rounds finished so far are in {run_dir}",
                  file=sys.stderr, flush=True)
            logging.shutdown()
            os._exit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}


def _start_ray(cfg: ExperimentConfig, env: dict[str, str], ray_address: str | None,
               attacks_during: bool = False) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
    runtime_env = {"env_vars": {**env, "PYTHONPATH": os.pathsep.join(sys.path)}}
    kwargs = dict(include_dashboard=False, runtime_env=runtime_env, log_to_driver=False,
                  logging_level=logging.WARNING)
    if ray_address:
        ray.init(address=ray_address, **kwargs)
    else:
        tmp = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
        # Flower's actor pool takes every CPU Ray counts, so attack tasks get a resource of
        # their own (lab/orchestration/during.py)
        extra = {"resources": {ATTACK_RESOURCE: 1}} if attacks_during else {}
        ray.init(num_cpus=max(os.cpu_count() or 1, 1), _temp_dir=tmp, **kwargs, **extra)


def run_simulation(cfg: ExperimentConfig, run_dir: Path | None = None,
                   ray_address: str | None = None, overwrite: bool = False,
                   attacks_during: bool = False) -> RunResult:
    """The federated run on Flower's simulation engine; with `attacks_during`, the
    configured attacks run as Ray tasks beside the rounds (lab/orchestration/during.py)."""
    import ray
    from flwr.simulation import run_simulation as flwr_run_simulation

    from clients.app import make_client_app
    from lab.observers import observer_mods
    from server.app import app as server_app

    from lab.validation import validate

    validate(cfg)  # before any work
    run_dir = prepare_run_dir(cfg, run_dir, overwrite)
    env = {**FLOWER_ENV, ENV_CONFIG: cfg.to_toml(), ENV_RUN_DIR: str(run_dir.resolve())}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # Ray workers inherit it; restored when the run ends
    handler = _attach_log(run_dir)
    address = ray_address or cfg.simulation.ray_address
    crashed, replaced, during, attacks = None, {}, None, []
    try:
        _start_ray(cfg, env, address, attacks_during)
        replaced = _stop_on_signals(run_dir)  # after Ray, which sets its own handlers
        app = server_app
        if attacks_during:
            from lab.orchestration.during import AttacksDuringTraining, server_app_then

            during = AttacksDuringTraining(cfg, run_dir)
            during.start()
            app = server_app_then(during.finish)
        flwr_run_simulation(
            server_app=app,
            client_app=make_client_app(cfg, observer_mods(cfg)),
            num_supernodes=cfg.federation.num_clients,
            backend_config={"client_resources": {
                "num_cpus": cfg.simulation.cpus_per_client,
                "num_gpus": cfg.simulation.gpus_per_client,
            }},
        )
    except Exception as err:  # noqa: BLE001 - the rows written so far say what finished
        crashed = err
        log.error("the simulation stopped: %r", err)
    finally:
        import signal

        if during is not None:
            attacks = during.records  # what finished; the rest is in leakage.jsonl or lost
        for sig, old in replaced.items():
            signal.signal(sig, old)
        ray.shutdown()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for name in ("fedsim", "flwr"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()
    rows = _finish_files(run_dir)
    failed = next((r["error"] for r in rows if "error" in r), None)
    if failed:
        raise RunFailed(f"{failed}; rounds before it are kept in {run_dir}", run_dir)
    done = max((r["round"] for r in rows), default=0)
    if done < cfg.federation.num_rounds or crashed is not None:
        raise RunFailed(
            f"the simulation finished {done} of {cfg.federation.num_rounds} rounds"
            + (f" ({type(crashed).__name__}: {crashed})" if crashed is not None else "")
            + f"; see {run_dir / 'run.log'}", run_dir
        )
    return RunResult(run_dir, rows, attacks,
                     attacks_deferred=during is not None and during.deferred)


def run_experiment(cfg: ExperimentConfig, run_dir: Path | None = None,
                   ray_address: str | None = None, progress: bool = True,
                   overwrite: bool = False) -> RunResult:
    """The main job: the federated run, then the configured attacks on its captures."""
    from lab.tables import build_tables

    during = cfg.attack.enabled and cfg.attack.when == "during"
    try:
        result = run_simulation(cfg, run_dir=run_dir, ray_address=ray_address,
                                overwrite=overwrite, attacks_during=during)
    except RunFailed as err:
        if err.run_dir is not None:
            build_tables(err.run_dir)  # tables of what finished
        raise
    if cfg.attack.enabled and (not during or result.attacks_deferred):
        from lab.orchestration.attacks import attack_run

        result.attacks = attack_run(cfg, result.run_dir, progress=progress)
    build_tables(result.run_dir)
    from lab.report import build_report

    build_report(result.run_dir)
    return result
