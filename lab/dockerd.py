"""A Docker daemon of fedsim's own (Debian's `dockerd`), for hosts where none runs: its
images in a data root that outlives it (so images are built once), its sockets and state
in a fresh folder, no iptables rules and no default bridge (compose's networks are
user-defined), stopped by its process id."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

DEFAULT_ROOT = Path(os.environ.get("FEDSIM_DOCKER_ROOT",
                                   Path.home() / ".cache" / "fedsim" / "docker"))


class DaemonError(RuntimeError):
    """The daemon could not start; the message says why (its log's last lines)."""


def unavailable_reason() -> str:
    """Why no daemon of our own can run here ('' when one can)."""
    for exe, package in (("dockerd", "docker.io"), ("docker", "docker.io")):
        if shutil.which(exe) is None:
            return f"no {exe} on this machine (apt-get install {package})"
    if os.geteuid() != 0:
        return "dockerd needs root here"
    return ""


def compose_command() -> Optional[list[str]]:
    """`docker compose` (the v2 plugin) where it is installed, else Debian's
    `docker-compose` (v1.29, which reads the same compose file), else None."""
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@contextmanager
def own_daemon(data_root: Path = DEFAULT_ROOT, timeout_s: float = 60) -> Iterator[dict]:
    """Start dockerd; yield the environment that points docker (and compose) at it; stop
    it (SIGTERM, then SIGKILL) by the pid it wrote, and remove its state folder."""
    reason = unavailable_reason()
    if reason:
        raise DaemonError(reason)
    data_root = Path(data_root)
    data_root.mkdir(parents=True, exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix="fsd"))  # short: containerd's socket paths
    sock, log_path = run / "docker.sock", run / "dockerd.log"
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "0"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["dockerd", "--data-root", str(data_root), "--exec-root", str(run / "exec"),
             "-H", f"unix://{sock}", "--pidfile", str(run / "docker.pid"),
             "--iptables=false", "--bridge=none"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(proc, env, timeout_s, log_path)
        yield env
    finally:
        _stop(proc)
        _unmount_under(run)  # dockerd leaves its netns mount behind
        shutil.rmtree(run, ignore_errors=True)


def _unmount_under(folder: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(str(folder) + "/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _wait_ready(proc, env: dict, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        done = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], env=env,
                              capture_output=True, text=True)
        if done.returncode == 0:
            return
        time.sleep(0.5)
    tail = log_path.read_text().strip().splitlines()[-3:]
    raise DaemonError(f"dockerd did not start within {timeout_s:g} s "
                      f"(status {proc.poll()}): {' | '.join(tail)}")


def _stop(proc, grace_s: float = 30) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # dockerd stops its containerd and containers itself
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
