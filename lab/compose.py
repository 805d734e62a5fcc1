"""docker-compose.yml read as the deployment's one definition: its services, their
commands with compose's variables filled in (deploy/*.env), and the executable each runs
(the image's: flwr/superlink -> flower-superlink, or the entrypoint). `lab.deploy` starts
them as local processes; the Docker route reads the same file.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fedsim.config import ConfigError

IMAGES = {"flwr/superlink": "flower-superlink", "flwr/supernode": "flower-supernode"}
APP_ENTRYPOINT = "flower-superexec"  # the Dockerfile's
_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)(?::-((?:[^}])*))?\}")


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
    """An env file (compose's format, which is dotenv's: KEY=VALUE, quotes, # comments),
    read by python-dotenv without touching the environment."""
    if path is None:
        return {}
    if not Path(path).is_file():
        raise ConfigError(f"--env-file {path}: no such file (deploy/ holds tls.env, "
                          "auth.env, wire.env, tls-wire.env)")
    from dotenv import dotenv_values

    return {k: v or "" for k, v in dotenv_values(path, interpolate=False).items()}


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
