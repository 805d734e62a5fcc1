"""The deployment topology of docker-compose.yml, read from that file, and run either by
Docker or as local processes on loopback (`fedsim deploy --local`).

The same service definitions serve both: a service's command is the compose command with
its variables filled in (deploy/*.env), its executable the image's (flwr/superlink ->
flower-superlink) or the entrypoint. Locally every compose hostname becomes 127.0.0.1, every
listening port a free local port, and /results and /certs local folders, so the topology
that Docker would start is started here as processes (SuperLink, SuperNodes, SuperExecs),
the experiment is submitted with `flwr run`, the attacker worker inverts the captures, and
the report is written.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fedsim.config import ConfigError
from lab.compose import Service, load_compose, read_env_file



class DeployError(RuntimeError):
    """The deployment could not start or finish; the message says which part and why."""


class DeployInterrupted(Exception):
    """SIGINT or SIGTERM ended the deployment; every process it started is stopped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.name = signum, signal.Signals(signum).name


class _StopOnSignals:
    """SIGINT and SIGTERM, in the main thread, raise DeployInterrupted once; later ones are
    ignored while the processes are being stopped. Inside `held()` (a process started but
    not yet recorded) the signal waits for the section to end."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.holding = 0
        self.pending = False

    def __call__(self, signum, _frame) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        if self.holding:
            self.pending = True
        else:
            raise DeployInterrupted(signum)

    @contextmanager
    def held(self):
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1
        if self.pending and not self.holding:
            self.pending = False
            raise DeployInterrupted(self.signum)

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals belong to the main thread: its caller handles them
            return
        old = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def localise(services: dict[str, Service], results: Path, certs: Path,
             run_dir: Optional[Path] = None) -> dict[str, Service]:
    """Hostnames -> 127.0.0.1, ports -> free local ports, /results (/results/run: the run
    folder) and /certs -> local folders."""
    ports = {name: (svc.listens, free_port()) for name, svc in services.items() if svc.listens}
    out = {}
    for name, svc in services.items():
        args = []
        for arg in svc.args:
            for host, (old, new) in ports.items():
                arg = arg.replace(f"{host}:{old}", f"127.0.0.1:{new}")
            if name in ports and arg == str(ports[name][0]):
                arg = str(ports[name][1])
            if name in ports:
                arg = arg.replace(f"0.0.0.0:{ports[name][0]}", f"127.0.0.1:{ports[name][1]}")
            arg = arg.replace("0.0.0.0:", "127.0.0.1:")
            args.append("127.0.0.1" if arg == "0.0.0.0" else _local_path(arg, results, certs,
                                                                         run_dir))
        out[name] = Service(name, svc.executable, args, svc.image, svc.profiles)
    return out


def _local_path(arg: str, results: Path, certs: Path, run_dir: Optional[Path]) -> str:
    """A container path argument (/results/run, /results/..., /certs/...) as a local one;
    anything else unchanged."""
    for prefix, local in (("/results/run", run_dir), ("/results", results), ("/certs", certs)):
        if local is not None and (arg == prefix or arg.startswith(prefix + "/")):
            return str(local) + arg[len(prefix):]
    return arg


def wait_for_port(port: int, timeout_s: float, what: str, proc=None) -> None:
    """Bounded wait for a listening port (a process that exits meanwhile ends it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DeployError(f"{what} exited with status {proc.returncode} before it listened "
                              f"on 127.0.0.1:{port}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise DeployError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:g} s")


def _signal_group(pgid: int, sig) -> bool:
    """Send `sig` to a process group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


class LocalTopology:
    """Start the services as processes, each the leader of its own process group (a
    context manager that stops every group: SIGTERM, then SIGKILL after a grace period)."""

    def __init__(self, services: dict[str, Service], workdir: Path, env: dict[str, str],
                 guard: Optional[_StopOnSignals] = None):
        self.services, self.workdir, self.env = services, Path(workdir), env
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []
        self.guard = guard or _StopOnSignals()

    def start(self, name: str, extra_env: Optional[dict] = None) -> subprocess.Popen:
        svc = self.services[name]
        exe = str(Path(sys.executable).parent / svc.executable)
        env = {k: v for k, v in {**self.env, **(extra_env or {})}.items() if v is not None}
        with self.guard.held():  # a signal now waits until the process is recorded
            log = open(self.workdir / f"{name}.log", "w")
            self.logs.append(log)
            proc = subprocess.Popen([exe if Path(exe).exists() else svc.executable,
                                     *svc.args], cwd=self.workdir, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            self.procs[name] = proc
        return proc

    def stop(self, name: str, sig=None) -> None:
        """One service's process group (tests stop a SuperNode this way)."""
        if name in self.procs:
            self._stop_groups([self.procs[name]], sig or signal.SIGTERM)

    @staticmethod
    def _stop_groups(procs: list, sig=signal.SIGTERM, grace_s: float = 10.0) -> None:
        """`sig` to every group at once, then SIGKILL to the groups with a process left
        after `grace_s` (a SuperExec's app processes are in its group)."""
        for proc in procs:
            _signal_group(proc.pid, sig)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                pass
        while time.monotonic() < deadline and any(_signal_group(p.pid, 0) for p in procs):
            time.sleep(0.1)
        for proc in procs:
            if _signal_group(proc.pid, signal.SIGKILL):
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._stop_groups(list(self.procs.values()))
        for log in self.logs:
            log.close()


def _register_node(public_key: Path, env: dict, folder: Path) -> None:
    """`flwr supernode register KEY fedsim-local`: SuperNode authentication's admission."""
    try:
        done = subprocess.run(["flwr", "supernode", "register", str(public_key),
                               "fedsim-local"], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise DeployError(f"registering {public_key.name} with the SuperLink took over "
                          "120 s") from None
    if done.returncode != 0:
        raise DeployError(f"registering {public_key.name} with the SuperLink failed: "
                          f"{(done.stdout + done.stderr).strip().splitlines()[-1:]}")


def flwr_federation(home: Path, name: str, address: str,
                    root_certificates: Optional[Path] = None) -> None:
    """A SuperLink connection for `flwr run` in FLWR_HOME/config.toml."""
    path = Path(home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    security = (f'root-certificates = "{root_certificates}"\n' if root_certificates
                else "insecure = true\n")
    path.write_text(f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\n'
                    f'address = "{address}"\n{security}')  # fresh: a rerun declares it once


def submit_run(federation: str, folder: Path, env: dict, timeout_s: float,
               run_config: Optional[str] = None) -> float:
    """`flwr run ROOT FEDERATION --stream` to the end (output in FOLDER/flwr-run.log);
    its seconds, or DeployError naming the log. The flwr beside this Python first (a
    virtual environment not activated), else PATH's."""
    extra = ["--run-config", run_config] if run_config else []
    flwr = Path(sys.executable).parent / "flwr"
    flwr = str(flwr) if flwr.exists() else "flwr"
    started = time.monotonic()
    try:
        with open(Path(folder) / "flwr-run.log", "w") as log:
            done = subprocess.run([flwr, "run", str(ROOT), federation, "--stream", *extra],
                                  cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise DeployError(f"the deployed run did not finish within {timeout_s:g} s; logs "
                          f"in {folder}") from None
    if done.returncode != 0:
        raise DeployError(f"flwr run exited with status {done.returncode}; see "
                          f"{Path(folder) / 'flwr-run.log'}")
    return time.monotonic() - started


ROOT = Path(__file__).resolve().parents[1]
START_ORDER = ("superlink", "eavesdropper", "supernode-", "serverapp", "clientapp-")


@dataclass
class Deployment:
    run_dir: Path
    folder: Path                 # logs, Flower's home and state
    seconds: float               # flwr run, submit to finish
    wire: Optional[dict] = None  # the proxy's status (wire.json), when it was in the path


def check_deployment(cfg, compose: Path = ROOT / "docker-compose.yml",
                     env_file: Optional[Path] = None, wire: bool = False
                     ) -> tuple[dict[str, str], int]:
    """Everything a deployment's inputs can get wrong, before any folder is made: the env
    file, and the compose file's SuperNodes against the experiment's clients. Returns the
    compose variables and the number of SuperNodes."""
    if not Path(compose).is_file():
        raise ConfigError(f"{compose}: no such compose file")
    env_vars = {**read_env_file(env_file)}
    if wire:
        env_vars["FLEET_ADDRESS"] = "eavesdropper"
    nodes = sum(1 for k in load_compose(compose, env_vars) if k.startswith("supernode-"))
    if nodes != cfg.federation.num_clients:
        raise ConfigError(f"federation.num_clients = {cfg.federation.num_clients}, but "
                          f"{Path(compose).name} has {nodes} SuperNodes; use an experiment "
                          "with that many clients (experiments/deploy.toml)")
    return env_vars, nodes


def deploy_local(cfg, run_dir: Path, compose: Path = ROOT / "docker-compose.yml",
                 env_file: Optional[Path] = None, wire: bool = False,
                 certs: Optional[Path] = None, timeout_s: float = 600,
                 during=None, attacker: bool = True) -> Deployment:
    """The compose topology as processes on loopback, the experiment submitted with
    `flwr run`, then the compose file's attacker worker (`fedsim watch --once`) over the
    captures; the caller writes tables and report. `during(topology)` runs in a thread
    while the run goes (tests stop a SuperNode from it). SIGINT or SIGTERM (when called
    from the main thread) stops every process it started, then raises DeployInterrupted."""
    env_vars, nodes = check_deployment(cfg, compose, env_file, wire)
    try:
        with _StopOnSignals().installed() as guard:
            return _deploy(cfg, Path(run_dir), Path(compose), env_vars, nodes, wire, certs,
                           timeout_s, during, attacker, guard)
    except DeployInterrupted as stop:
        stop.folder = deploy_folder(run_dir)  # the processes' logs
        raise


def deploy_folder(run_dir: Path) -> Path:
    """RUN_DIR-deploy: the processes' logs, Flower's home and the SuperLink's state."""
    return Path(run_dir).parent / f"{Path(run_dir).name}-deploy"


def _deploy(cfg, run_dir: Path, compose: Path, env_vars: dict, nodes: int, wire: bool,
            certs: Optional[Path], timeout_s: float, during, attacker: bool,
            guard: _StopOnSignals) -> Deployment:
    folder = deploy_folder(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    certs = Path(certs) if certs else folder / "certs"
    tls = "--ssl-certfile" in " ".join(env_vars.values())
    auth = "--enable-supernode-auth" in " ".join(env_vars.values())
    if (tls and not (certs / "ca.pem").is_file()) or (
            auth and not (certs / "supernode-0.key").is_file()):
        from lab.certs import make_certs

        make_certs(certs, nodes=nodes if auth else 0)
    profiles = ("cpu", "wire") if wire else ("cpu",)
    services = localise(load_compose(compose, env_vars, profiles),
                        folder, certs, Path(run_dir))
    home = folder / "flwr"
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FEDSIM_CONFIG_TOML": cfg.to_toml(), "FEDSIM_RUN_DIR": str(run_dir)}
    link = services["superlink"]
    address = f"127.0.0.1:{link.listens}"
    flwr_federation(home, "fedsim-local", address, certs / "ca.pem" if tls else None)
    with LocalTopology(services, folder, env, guard) as topo:
        for prefix in START_ORDER:
            for name in [n for n in services if n.startswith(prefix)]:
                if auth and name == "supernode-0":  # the SuperLink admits registered keys
                    for i in range(nodes):
                        _register_node(certs / f"supernode-{i}.pub", env, folder)
                # as in the container, the proxy reads the facts from RUN_DIR/config.toml
                proc = topo.start(name, {"FEDSIM_CONFIG_TOML": None}
                                  if name == "eavesdropper" else None)
                if name in ("superlink", "eavesdropper"):
                    wait_for_port(services[name].listens, 60, name, proc)
        watcher = (threading.Thread(target=during, args=(topo,), daemon=True)
                   if during else None)
        if watcher:
            watcher.start()
        seconds = submit_run("fedsim-local", folder, env, timeout_s)
        if attacker and "attacker" in services and cfg.attack.enabled:
            # the attacker worker of the compose file, once over the finished run's captures
            services["attacker"].args.append("--once")
            worker = topo.start("attacker")
            try:
                worker.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise DeployError(f"the attacker worker did not finish within {timeout_s:g} "
                                  f"s; see {folder / 'attacker.log'}") from None
    return Deployment(Path(run_dir), folder, seconds,
                      json.loads((Path(run_dir) / "wire.json").read_text())
                      if (Path(run_dir) / "wire.json").is_file() else None)
