"""docker-compose.yml brought up by `docker compose` (or Debian's docker-compose v1.29),
unchanged: one compose project per stack, its `./deploy/certs` in a folder of the caller's
(`--project-directory`), an experiment handed to the apps through the results volume, the
run submitted from the host with `flwr run` to the SuperLink's published port, the
attacker worker's tables and report awaited in the results volume and copied out, and
every container, network and volume the project made removed by id.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lab.deploy import DeployError, flwr_federation, submit_run, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
CONTROL_PORT = 9093  # the compose file publishes the SuperLink's port as itself
EXPERIMENT = "/results/experiment.toml"
REPORT_LINE = "tables and report updated: round {done} of {total}"  # fedsim watch prints it


@dataclass
class StackRun:
    results: Path                 # a copy of the results volume's run folder
    seconds: float                # flwr run, submit to finish
    logs: Path                    # every service's output
    made: dict = field(default_factory=dict)  # kind -> ids the project made
    wire: Optional[dict] = None   # the eavesdropper's wire.json


class ComposeStack:
    """One compose project of docker-compose.yml on the daemon that `env` points at."""

    def __init__(self, compose_cmd: list[str], workdir: Path, env: dict,
                 env_file: Optional[Path] = None, profiles: tuple[str, ...] = ("cpu",)):
        self.workdir, self.env = Path(workdir), env
        self.project = f"fedsim{uuid.uuid4().hex[:8]}"
        self.base = [*compose_cmd, "-f", str(COMPOSE), "--project-directory",
                     str(self.workdir), "-p", self.project]
        if env_file:
            self.base += ["--env-file", str(env_file)]
        for profile in profiles:
            self.base += ["--profile", profile]
        self.made: dict[str, set] = {"containers": set(), "networks": set(), "volumes": set()}
        self.ids: dict[str, str] = {}  # service -> container, until the next `up`

    def compose(self, *args: str, timeout: float = 600, check: bool = True,
                **kw) -> subprocess.CompletedProcess:
        if args[0] == "up":
            self.ids.clear()
        done = subprocess.run([*self.base, *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, **kw)
        self.record()
        if check and done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-5:])
            raise DeployError(f"docker compose {args[0]} failed (status {done.returncode}): "
                              f"{tail}")
        return done

    def docker(self, *args: str, timeout: float = 300, check: bool = True,
               **kw) -> subprocess.CompletedProcess:
        done = subprocess.run(["docker", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, **kw)
        if check and done.returncode != 0:
            raise DeployError(f"docker {args[0]} failed: {done.stderr.strip()[-300:]}")
        return done

    def record(self) -> dict[str, set]:
        """Every container, network and volume labelled with this project (kept even
        after they are gone, so removal can be checked by id)."""
        label = f"label=com.docker.compose.project={self.project}"
        for kind, cmd in (("containers", ["ps", "-a", "-q", "--no-trunc"]),
                          ("networks", ["network", "ls", "-q", "--no-trunc"]),
                          ("volumes", ["volume", "ls", "-q"])):
            out = self.docker(*cmd, "--filter", label, check=False).stdout
            self.made[kind] |= set(out.split())
        return self.made

    def container(self, service: str) -> str:
        if service not in self.ids:
            ids = self.compose("ps", "-a", "-q", service).stdout.split()
            if not ids:
                raise DeployError(f"no container of service {service} in {self.project}")
            self.ids[service] = ids[0]
        return self.ids[service]

    def read(self, service: str, path: str) -> str:
        """A file in a running service's container ('' when it is not there)."""
        done = self.docker("exec", self.container(service), "cat", path, check=False)
        return done.stdout if done.returncode == 0 else ""

    def stop(self, service: str) -> None:
        self.docker("stop", "-t", "10", self.container(service))

    def logs(self) -> str:
        return self.compose("logs", "--no-color", check=False).stdout

    def down(self) -> list[str]:
        """Stop and remove the project; then anything of it still there, by id. Returns
        the ids that remain (none, unless removal failed)."""
        self.record()
        self.compose("down", "-v", "--remove-orphans", "-t", "10", check=False)
        left = []
        for kind, rm in (("containers", ["rm", "-f", "-v"]), ("networks", ["network", "rm"]),
                         ("volumes", ["volume", "rm", "-f"])):
            for ident in sorted(self.made[kind]):
                if self.exists(kind, ident):
                    self.docker(*rm, ident, check=False)
                    if self.exists(kind, ident):
                        left.append(ident)
        return left

    def exists(self, kind: str, ident: str) -> bool:
        sub = {"containers": "container", "networks": "network", "volumes": "volume"}[kind]
        return self.docker(sub, "inspect", ident, check=False).returncode == 0


def _tls_certs(folder: Path) -> None:
    """`fedsim certs`, readable by the Flower images' uid 49999 (the README's step)."""
    from lab.certs import make_certs

    make_certs(folder)
    for path in [folder, *folder.iterdir()]:
        os.chown(path, 49999, -1)


def run_stack(cfg, compose_cmd: list[str], workdir: Path, env: dict, tls: bool = False,
              wire: bool = False, during=None, timeout_s: float = 900) -> StackRun:
    """`cfg` through the compose stack (insecure or TLS; the eavesdropper in the path with
    `wire`), to the attacker worker's report for the last round. `during(stack)` runs in a
    thread while the run goes (the tests stop a SuperNode). The stack is removed at the
    end, whatever happened; its ids are in the result (or the raised error's `.made`)."""
    workdir = Path(workdir)
    certs = workdir / "deploy" / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    if tls:
        _tls_certs(certs)
    env_file = ({(False, False): None, (False, True): "wire.env", (True, False): "tls.env",
                 (True, True): "tls-wire.env"})[(tls, wire)]
    stack = ComposeStack(compose_cmd, workdir, env,
                         ROOT / "deploy" / env_file if env_file else None,
                         ("cpu", "wire") if wire else ("cpu",))
    try:
        return _run(stack, cfg, workdir, tls, wire, during, timeout_s)
    except BaseException as err:
        (workdir / "compose.log").write_text(stack.logs())
        err.made = stack.record()
        raise
    finally:
        left = stack.down()
        if left:
            raise DeployError(f"could not remove {left} of compose project {stack.project}")


def _run(stack: ComposeStack, cfg, workdir: Path, tls: bool, wire: bool, during,
         timeout_s: float) -> StackRun:
    _refuse_taken_port(CONTROL_PORT)
    stack.compose("up", "-d", "--no-build", "volume-init")
    init = stack.container("volume-init")
    if stack.docker("wait", init).stdout.strip() != "0":
        raise DeployError("volume-init failed: " + stack.logs()[-300:])
    exp = workdir / "experiment.toml"
    exp.write_text(cfg.to_toml())
    stack.docker("cp", str(exp), f"{init}:{EXPERIMENT}")
    stack.compose("up", "-d", "--no-build")
    wait_for_port(CONTROL_PORT, 120, "the SuperLink container")
    _await_answer(CONTROL_PORT, tls, 120)
    home = workdir / "flwr"
    flwr_federation(home, "fedsim-compose", f"127.0.0.1:{CONTROL_PORT}",
                    workdir / "deploy" / "certs" / "ca.pem" if tls else None)
    flwr_env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1"}
    flwr_env.pop("FEDSIM_CONFIG_TOML", None)
    watcher = threading.Thread(target=during, args=(stack,), daemon=True) if during else None
    if watcher:
        watcher.start()
    seconds = submit_run("fedsim-compose", workdir, flwr_env, timeout_s,
                         f'experiment="{EXPERIMENT}"')
    if watcher:
        watcher.join(timeout=60)
    _await_report(stack, cfg, timeout_s)
    results = workdir / "results"
    stack.docker("cp", f"{stack.container('attacker')}:/results/run", str(results))
    (workdir / "compose.log").write_text(stack.logs())
    wire_json = results / "wire.json"
    return StackRun(results, seconds, workdir / "compose.log", stack.record(),
                    json.loads(wire_json.read_text()) if wire_json.is_file() else None)


def _await_answer(port: int, tls: bool, timeout_s: float) -> None:
    """Until the SuperLink itself answers on the published port: Docker's port proxy
    accepts connections before the server in the container listens."""
    import socket
    import ssl

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if tls:
                    ctx = ssl.create_default_context()
                    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                    with ctx.wrap_socket(sock):  # a finished handshake is an answer
                        return
                sock.sendall(b"GET / HTTP/1.1\r\nHost: superlink\r\n\r\n")
                if sock.recv(1):
                    return
        except OSError:
            pass
        time.sleep(1)
    raise DeployError(f"the SuperLink container did not answer on 127.0.0.1:{port} within "
                      f"{timeout_s:g} s")


def _await_report(stack: ComposeStack, cfg, timeout_s: float) -> None:
    """Until the attacker worker has refreshed tables and report for the last round."""
    line = REPORT_LINE.format(done=cfg.federation.num_rounds, total=cfg.federation.num_rounds)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = stack.docker("logs", stack.container("attacker"), check=False)
        if line in out.stdout + out.stderr:
            return
        if stack.docker("inspect", "-f", "{{.State.Running}}", stack.container("attacker"),
                        check=False).stdout.strip() != "true":
            raise DeployError("the attacker worker stopped: " + out.stderr[-300:])
        time.sleep(2)
    raise DeployError(f"the attacker worker did not report the last round within "
                      f"{timeout_s:g} s")


def _refuse_taken_port(port: int) -> None:
    """The compose file publishes the SuperLink on `port`: one line when it is taken."""
    import socket

    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise DeployError(f"port {port} is in use on this host: the compose file "
                              "publishes the SuperLink on it")
