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

from fedsim.config import ConfigError, ExperimentConfig
from fedsim.records import DiskFull, RunLogHandler, disk_full, read_rows, write_csv
from fedsim.run_lock import LOCK_NAME, RunLock
from fedsim.run_folder import RunFolder
from fedsim.runtime import (ENV_CONFIG, ENV_RUN_DIR, FLOWER_ENV, Interrupted, RunFailed,
                            new_run_dir, raise_on_signals, restore_signals)

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


_held: dict[Path, RunLock] = {}  # folders prepare_run_dir locked for this process


def claim_run_dir(cfg: ExperimentConfig, run_dir: Path | None = None,
                  overwrite: bool = False) -> tuple[Path, RunLock]:
    """A new run folder, or the given one, locked for this process (`fedsim.run_lock`): a
    folder another live run writes is refused. A given folder that holds files is refused
    too (rows would mix and captures be replaced), unless `overwrite`, which clears only a
    fedsim run folder (one with a fedsim config.toml): never a folder of other files."""
    run_dir = Path(run_dir) if run_dir is not None else new_run_dir(cfg)
    own = _held.pop(run_dir.resolve(), None)
    if own is not None:  # this process prepared it before: it is the one writing it again
        own.release()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--run-dir {run_dir}: cannot create it ({err.strerror})") from None
    lock = RunLock(run_dir)
    try:
        _clear(run_dir, overwrite)
        RunFolder(run_dir).config.write_text(cfg.to_toml())
    except BaseException:
        lock.release()
        raise
    return run_dir, lock


def prepare_run_dir(cfg: ExperimentConfig, run_dir: Path | None = None,
                    overwrite: bool = False) -> Path:
    """`claim_run_dir` for a caller that writes the folder until its process ends (`fedsim
    deploy`): the lock is held until then, or until this process prepares it again."""
    run_dir, lock = claim_run_dir(cfg, run_dir, overwrite)
    _held[run_dir.resolve()] = lock
    return run_dir


def _clear(run_dir: Path, overwrite: bool) -> None:
    import shutil

    files = [p for p in run_dir.iterdir() if p.name != LOCK_NAME]
    if not files:
        return
    if not overwrite:
        raise ConfigError(f"--run-dir {run_dir} already holds files: pick a new folder, "
                          "or pass --overwrite to clear it first")
    if not _is_run_folder(run_dir):
        raise ConfigError(f"--overwrite: {run_dir} is neither empty nor a fedsim run folder "
                          "(no fedsim config.toml in it): refusing to delete its files")
    for path in files:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _is_run_folder(run_dir: Path) -> bool:
    import tomllib

    from fedsim.config import from_dict

    try:
        from_dict(tomllib.loads(RunFolder(run_dir).config.read_text()))
    except (OSError, ValueError):  # missing, unreadable, not TOML, not an experiment
        return False
    return True


def _attach_log(run_dir: Path) -> logging.Handler:
    handler = RunLogHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("fedsim", "flwr"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    return handler


def finish_files(run_dir: Path) -> list[dict]:
    """The tables as far as the run got: metrics.csv, leakage.csv and rounds.csv."""
    from lab.tables import build_tables

    rows = read_rows(RunFolder(run_dir).metrics)
    write_csv(run_dir / "metrics.csv", rows)
    build_tables(run_dir)
    return rows


def _signum(err: KeyboardInterrupt) -> int:
    import signal

    return getattr(err, "signum", signal.SIGINT)  # a plain KeyboardInterrupt is Ctrl-C


def _name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def _stop_on_signals(run_dir: Path, lock: RunLock) -> None:
    """During the rounds, one Ctrl-C (SIGINT) or SIGTERM ends the run within seconds: the
    files of the rounds already done are finished (CSV included), the Ray processes this
    run started are shut down, the folder's lock is released, one line names the run
    folder, and the process exits 130 or 143. Flower's simulation runs the ServerApp in a
    thread that a KeyboardInterrupt would leave waiting, so the handler ends the process
    itself."""
    import signal

    def stop(signum, _frame):
        name = _name(signum)
        log.error("%s: stopping the run", name)
        for logger in (logging.getLogger("flwr"), logging.getLogger()):
            for handler in logger.handlers:  # in-flight messages now fail: run.log keeps
                if not isinstance(handler, logging.FileHandler):  # their lines, not the
                    handler.setLevel(logging.CRITICAL + 1)        # terminal
        try:
            finish_files(run_dir)
        finally:
            lock.release()
            print(f"interrupted ({name}): the rounds finished so far are in {run_dir}",
                  file=sys.stderr, flush=True)
            logging.shutdown()
            # Not ray.shutdown(): Flower's threads still call Ray, and a call after it
            # makes Ray's core worker end the process with status 1 before this one.
            kill_descendants()
            os._exit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)


def kill_descendants() -> None:
    """SIGKILL every process this one started, and theirs (Linux /proc): the local Ray
    cluster of a run (GCS, raylet, workers), none of a cluster it only attached to."""
    import signal

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()  # "pid (comm) state ppid ...", comm may hold ")"
            ppid = int(text.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(text.split(" ", 1)[0]))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    found, todo = [], [os.getpid()]
    while todo:  # every descendant first: one killed early would leave its own orphaned
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def attack_slots(cfg: ExperimentConfig, cpus: int) -> int:
    """Attack tasks a local run lets run at once: `simulation.attack_slots`, or as many as
    its CPUs hold at `cpus_per_attack` each. During the rounds they share the CPUs with
    the clients; after the last round they have them to themselves."""
    sim = cfg.simulation
    return sim.attack_slots or max(1, int(cpus // sim.cpus_per_attack))


def _start_ray(cfg: ExperimentConfig, env: dict[str, str], ray_address: str | None,
               attacks_during: bool = False) -> None:
    import signal

    import ray

    if ray.is_initialized():
        ray.shutdown()
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        if ray_address:  # a cluster's workers get the run's environment from the job
            ray.init(address=ray_address, runtime_env={"env_vars": env}, **kwargs)
        else:
            # A local cluster's workers inherit it from the raylet this process starts
            # (the caller put `env` in os.environ for the run). No job runtime_env: with
            # one, every worker starts through Ray's runtime-env set-up and the workers Ray
            # prestarts go unused (measured: a 1-round run's workers 19.4 -> 14.4 s of
            # CPU, the run 33.1 -> 25.3 s).
            tmp = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
            # Flower's actor pool takes every CPU Ray counts, so attack tasks get a resource
            # of their own (lab/orchestration/during.py)
            cpus = max(os.cpu_count() or 1, 1)
            extra = ({"resources": {ATTACK_RESOURCE: attack_slots(cfg, cpus)}}
                     if attacks_during else {})
            ray.init(num_cpus=cpus, _temp_dir=tmp, **kwargs, **extra)
    except SystemExit as err:  # the SIGTERM handler ray.init sets first calls sys.exit(15)
        if err.code == signal.SIGTERM:
            raise Interrupted(signal.SIGTERM) from None
        raise


def run_simulation(cfg: ExperimentConfig, run_dir: Path | None = None,
                   ray_address: str | None = None, overwrite: bool = False,
                   attacks_during: bool = False) -> RunResult:
    """The federated run on Flower's simulation engine; with `attacks_during`, the
    configured attacks run as Ray tasks beside the rounds (lab/orchestration/during.py).
    The run folder is locked while it runs."""
    from lab.validation import validate

    validate(cfg)  # before any work
    run_dir, lock = claim_run_dir(cfg, run_dir, overwrite)
    try:
        return _simulate(cfg, run_dir, lock, ray_address, attacks_during)
    finally:
        lock.release()


def _simulate(cfg: ExperimentConfig, run_dir: Path, lock: RunLock, ray_address: str | None,
              attacks_during: bool) -> RunResult:
    """The rounds, into a claimed run folder. A signal while Ray starts raises
    `Interrupted` (one line, 130 / 143); during the rounds `_stop_on_signals` ends the
    process; a full disk stops the run with `RunFailed` naming the file and the space."""
    import ray
    from flwr.simulation import run_simulation as flwr_run_simulation

    from clients.app import make_client_app
    from lab.observers import observer_mods
    from server.app import app as server_app

    env = {**FLOWER_ENV, ENV_CONFIG: cfg.to_toml(), ENV_RUN_DIR: str(run_dir.resolve()),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # Ray workers inherit it; restored when the run ends
    handler = _attach_log(run_dir)
    address = ray_address or cfg.simulation.ray_address
    crashed, during, attacks = None, None, []
    callers = raise_on_signals()  # until the rounds start, a signal raises Interrupted
    try:
        try:
            _start_ray(cfg, env, address, attacks_during)
            _stop_on_signals(run_dir, lock)  # after Ray, which sets its own handlers
        except KeyboardInterrupt as err:
            raise Interrupted(_signum(err), f"interrupted ({_name(_signum(err))}) while Ray "
                              f"was starting: no round ran; {run_dir} holds the config "
                              "only") from None
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
        if disk_full(err, run_dir) is None:  # a full disk is said once, below
            log.error("the simulation stopped: %r", err)
    finally:
        restore_signals(callers)  # the caller's handlers, not Ray's
        if during is not None:
            attacks = during.records  # what finished; the rest is in leakage.jsonl or lost
        ray.shutdown()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for name in ("fedsim", "flwr"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()
    full = disk_full(crashed, run_dir) if crashed is not None else None
    try:
        rows = finish_files(run_dir)
    except DiskFull as err:
        full, rows = full or err, read_rows(RunFolder(run_dir).metrics)
    if full is not None:
        raise RunFailed(f"{full}; the rounds before it are kept in {run_dir}", run_dir)
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
    """The main job: the federated run, then the configured attacks on its captures; the
    run folder is locked from the first round to the report."""
    from lab.validation import validate

    validate(cfg)  # before any work
    during = cfg.attack.enabled and cfg.attack.when == "during"
    run_dir, lock = claim_run_dir(cfg, run_dir, overwrite)
    try:
        result = _simulate(cfg, run_dir, lock, ray_address, during)
        _after_training(cfg, result, cfg.attack.enabled and (not during
                                                             or result.attacks_deferred),
                        progress)
    finally:
        lock.release()
    return result


def _after_training(cfg: ExperimentConfig, result: RunResult, attack: bool,
                    progress: bool) -> None:
    """The attacks after training, then the tables and the report. One SIGINT or SIGTERM
    stops them in one line, exit 130 / 143 (`Interrupted`), with every attack that
    finished in the tables; a full disk stops them in one line too (`RunFailed`)."""
    from lab.report import build_report
    from lab.tables import build_tables

    run_dir = result.run_dir
    callers = raise_on_signals()  # Ray's handlers left with Ray
    try:
        if attack:
            from lab.orchestration.attacks import attack_run

            result.attacks = attack_run(cfg, run_dir, progress=progress)
        build_tables(run_dir)
        build_report(run_dir)
    except KeyboardInterrupt as err:
        build_tables(run_dir)
        done = sum("error" not in r for r in read_rows(RunFolder(run_dir).leakage))
        raise Interrupted(_signum(err), f"interrupted ({_name(_signum(err))}) after "
                          f"training: the rounds and the {done} attacks finished are in "
                          f"{run_dir}") from None
    except DiskFull as err:
        raise RunFailed(f"{err}; the rounds and the attacks before it are kept in {run_dir}",
                        run_dir) from None
    finally:
        restore_signals(callers)
