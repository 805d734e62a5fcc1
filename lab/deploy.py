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
import re
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

IMAGES = {"flwr/superlink": "flower-superlink", "flwr/supernode": "flower-supernode"}
APP_ENTRYPOINT = "flower-superexec"  # the Dockerfile's
_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)(?::-((?:[^}])*))?\}")


class DeployError(RuntimeError):
    """The deployment could not start or finish; the message says which part and why."""


@dataclass
class Service:
    name: str
    executable: str
    args: list[str]
    image: Optional[str] = None
    profiles: list[str] = field(default_factory=list)

    @property
    def listens(self) -> Optional[int]:
        """The port it serves on (`--port N`, or a proxy's `--listen HOST:N`)."""
        for flag in ("--port", "--listen"):
            if flag in self.args:
                return int(self.args[self.args.index(flag) + 1].rsplit(":", 1)[-1])
        return None


def read_env_file(path: Optional[Path]) -> dict[str, str]:
    """KEY=VALUE lines (compose's env-file format; # comments)."""
    if path is None:
        return {}
    if not Path(path).is_file():
        raise DeployError(f"--env-file {path}: no such file (deploy/ holds tls.env, "
                          "auth.env, wire.env, tls-wire.env)")
    out = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip().strip('"')
    return out


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR} and ${VAR:-default}."""
    return _VAR.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)


def load_compose(path: Path, env: Optional[dict[str, str]] = None,
                 profiles: tuple[str, ...] = ()) -> dict[str, Service]:
    """The services (those without a profile, plus the named profiles'), commands filled."""
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    env = dict(env or {})
    services = {}
    for name, spec in data["services"].items():
        svc_profiles = list(spec.get("profiles", []))
        if svc_profiles and not set(svc_profiles) & set(profiles):
            continue
        command = spec.get("command", "")
        args = (shlex.split(interpolate(command, env)) if isinstance(command, str)
                else [interpolate(str(a), env) for a in command])
        image = spec.get("image")
        entry = spec.get("entrypoint")
        if entry:
            executable = entry[0] if isinstance(entry, list) else shlex.split(entry)[0]
        elif image and image.split(":")[0] in IMAGES:
            executable = IMAGES[image.split(":")[0]]
        else:
            executable = APP_ENTRYPOINT
        services[name] = Service(name, executable, args, image, svc_profiles)
    return services


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


class LocalTopology:
    """Start the services as processes (a context manager that stops every one of them)."""

    def __init__(self, services: dict[str, Service], workdir: Path, env: dict[str, str]):
        self.services, self.workdir, self.env = services, Path(workdir), env
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []

    def start(self, name: str, extra_env: Optional[dict] = None) -> subprocess.Popen:
        svc = self.services[name]
        exe = str(Path(sys.executable).parent / svc.executable)
        log = open(self.workdir / f"{name}.log", "w")
        self.logs.append(log)
        env = {k: v for k, v in {**self.env, **(extra_env or {})}.items() if v is not None}
        proc = subprocess.Popen([exe if Path(exe).exists() else svc.executable, *svc.args],
                                cwd=self.workdir, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig=None) -> None:
        import signal

        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig or signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)
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


ROOT = Path(__file__).resolve().parents[1]
START_ORDER = ("superlink", "eavesdropper", "supernode-", "serverapp", "clientapp-")


@dataclass
class Deployment:
    run_dir: Path
    folder: Path                 # logs, Flower's home and state
    seconds: float               # flwr run, submit to finish
    wire: Optional[dict] = None  # the proxy's status (wire.json), when it was in the path


def deploy_local(cfg, run_dir: Path, compose: Path = ROOT / "docker-compose.yml",
                 env_file: Optional[Path] = None, wire: bool = False,
                 certs: Optional[Path] = None, timeout_s: float = 600,
                 during=None, attacker: bool = True) -> Deployment:
    """The compose topology as processes on loopback, the experiment submitted with
    `flwr run`, then the compose file's attacker worker (`fedsim watch --once`) over the
    captures; the caller writes tables and report. `during(topology)` runs in a thread
    while the run goes (tests stop a SuperNode from it)."""
    import threading

    env_vars = {**read_env_file(env_file)}
    if wire:
        env_vars["FLEET_ADDRESS"] = "eavesdropper"
    nodes = sum(1 for k in load_compose(compose, env_vars) if k.startswith("supernode-"))
    if nodes != cfg.federation.num_clients:
        raise DeployError(f"federation.num_clients = {cfg.federation.num_clients}, but "
                          f"{compose.name} has {nodes} SuperNodes; use an experiment with "
                          "that many clients (experiments/deploy.toml)")
    folder = Path(run_dir).parent / f"{Path(run_dir).name}-deploy"
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
    with LocalTopology(services, folder, env) as topo:
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
        started = time.monotonic()
        try:
            with open(folder / "flwr-run.log", "w") as log:
                done = subprocess.run(["flwr", "run", str(ROOT), "fedsim-local", "--stream"],
                                      cwd=folder, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DeployError(f"the deployed run did not finish within {timeout_s:g} s; logs "
                              f"in {folder}") from None
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise DeployError(f"flwr run exited with status {done.returncode}; see "
                              f"{folder / 'flwr-run.log'}")
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
