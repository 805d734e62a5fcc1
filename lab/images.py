"""The images docker-compose.yml runs, built without any image registry (`fedsim images
build`): a Debian base made by debootstrap from the archive apt uses (or an image the user
already has), fedsim's app image from the repo's Dockerfile, and stand-ins for
flwr/superlink, flwr/supernode and flwr/superexec at the pinned flwr version with the
official images' tags, entrypoints, user (uid 49999) and working folder
(deploy/flwr.Dockerfile), so the compose file runs unchanged. Where the official images can
be pulled they are used instead.

Package installs inside a build use the host network and this machine's pip
configuration: its indexes and find-links, local folders (file://) included, which a
loopback HTTP server lends to the build, its constraints and its CA bundle (fetched by
deploy/with-lent-pip.sh for the step, kept in no layer). torch comes from a CPU pair
(torch and torchvision `+cpu` wheels) found there, else from PyTorch's CPU index where it
answers, else from the indexes as they are: PyPI's CUDA build, the one that works beside
PyPI's torchvision (README, Deployment, for the sizes).
"""

from __future__ import annotations

import http.server
import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parents[1]
FLWR_VERSION = importlib.metadata.version("flwr")
BASE_TAG = "fedsim-base:bookworm"
APP_TAG = "fedsim-app:latest"  # docker-compose.yml's
ROLES = ("superlink", "supernode", "superexec")
LENT_PORT = 47_931  # where the host's pip settings are lent to builds (loopback)
DEBIAN_PACKAGES = ("python3", "python3-pip", "python3-venv", "python-is-python3",
                   "ca-certificates")


class ImageError(RuntimeError):
    """A build step failed; the message names it and ends with its output's last lines."""


def flwr_tags(version: str = FLWR_VERSION) -> dict[str, str]:
    return {role: f"flwr/{role}:{version}" for role in ROLES}


def _docker(*args: str, env: Optional[dict] = None, check: bool = True, timeout: float = 3600,
            what: str = "", **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)
    if check and done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-6:])
        raise ImageError(f"{what or 'docker ' + args[0]} failed (status {done.returncode}): "
                         f"{tail}")
    return done


def image_exists(tag: str, env: Optional[dict] = None, source: Optional[tuple] = None) -> bool:
    """Tagged here (and, with `source`, its label fedsim.source one of those: the inputs
    it was built from; '' for an image not built by fedsim, a pulled official one)."""
    done = _docker("image", "inspect", "--format", '{{index .Config.Labels "fedsim.source"}}',
                   tag, env=env, check=False)
    label = done.stdout.strip().replace("<no value>", "")
    return done.returncode == 0 and (source is None or label in source)


def source_digest(*paths: Path, extra: str = "") -> str:
    """A digest of the files an image is built from (folders walked, caches skipped), so
    an image from older code is rebuilt rather than kept."""
    import hashlib

    digest = hashlib.sha256(extra.encode())
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


APP_INPUTS = ("Dockerfile", "deploy/with-lent-pip.sh", "pyproject.toml", "README.md",
              "fedsim", "clients", "server", "attacker", "lab", "experiments")
FLWR_INPUTS = ("deploy/flwr.Dockerfile", "deploy/with-lent-pip.sh")


def image_size_mb(tag: str, env: Optional[dict] = None) -> float:
    out = _docker("image", "inspect", "--format", "{{.Size}}", tag, env=env).stdout
    return int(out.strip()) / 1e6


# -- this machine's pip configuration, lent to builds ------------------------------------

@dataclass
class PipConfig:
    index_url: Optional[str] = None
    extra_index_urls: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)
    trusted_hosts: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)  # files' lines
    timeout: Optional[str] = None
    cert: Optional[Path] = None  # a CA bundle (a TLS-inspecting proxy's CA, say)


def read_pip_config(python: str = sys.executable) -> PipConfig:
    """`pip config list` (environment variables first, then user, then global files)."""
    done = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True,
                          text=True)
    values: dict[str, str] = {}
    for line in done.stdout.splitlines():
        m = re.match(r"^([^=]*)\.([a-z-]+)='(.*)'$", line.strip())
        if m and (m.group(2) not in values or m.group(1) == ":env:"):
            values[m.group(2)] = m.group(3)
    cfg = PipConfig(index_url=values.get("index-url"),
                    extra_index_urls=values.get("extra-index-url", "").split(),
                    find_links=values.get("find-links", "").split(),
                    trusted_hosts=values.get("trusted-host", "").split(),
                    timeout=values.get("default-timeout"),
                    cert=Path(values["cert"]) if values.get("cert") else None)
    for path in values.get("constraint", "").split():
        if Path(path).is_file():
            cfg.constraints += [ln for ln in Path(path).read_text().splitlines()
                                if ln.strip() and not ln.lstrip().startswith("#")]
    return cfg


def _local_folder(location: str) -> Optional[Path]:
    """A file:// URL or a plain path as a local folder (None for a remote URL)."""
    if location.startswith("file://"):
        return Path(unquote(urlparse(location).path))
    return None if "://" in location else Path(location)


def cpu_torch_pins(cfg: PipConfig) -> list[str]:
    """`torch==V+cpu` and `torchvision==W+cpu` for the newest CPU pair in the local
    find-links folders; none unless both are there (PyPI's torchvision needs the CUDA
    torch: its ops fail to load beside a CPU one, and importing it fails)."""
    newest = {}
    for loc in cfg.find_links:
        folder = _local_folder(loc)
        for name in ("torch", "torchvision"):
            for path in (folder.glob(f"{name}-*+cpu-*.whl") if folder and folder.is_dir()
                         else ()):
                version = path.name.split("-")[1]
                key = [int(x) for x in re.findall(r"\d+", version.split("+")[0])]
                if name not in newest or key > newest[name][0]:
                    newest[name] = (key, version)
    if len(newest) < 2:
        return []
    return [f"{name}=={version}" for name, (_, version) in sorted(newest.items())]


def reachable(url: str, timeout: float = 10) -> bool:
    """Whether an index answers at all (an unreachable one costs pip minutes of retries)."""
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
        return True
    except Exception:  # noqa: BLE001  (any failure: not reachable)
        return False


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files under the lent folders only, each under /<n>/ (an index's parent folder, so
    its relative links such as ../../files/X resolve)."""
    roots: dict[str, Path] = {}
    extra: dict[str, bytes] = {}

    def translate_path(self, path: str) -> str:
        parts = unquote(urlparse(path).path).lstrip("/").split("/", 1)
        root = self.roots.get(parts[0])
        if root is None:
            return "/nonexistent"
        target = (root / (parts[1] if len(parts) > 1 else "")).resolve()
        return str(target) if target.is_relative_to(root.resolve()) else "/nonexistent"

    def do_GET(self):
        body = self.extra.get(self.path)
        if body is None:
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


@contextmanager
def lent_pip_config(cfg: PipConfig, torch_index: Optional[str] = None) -> Iterator[dict]:
    """The build arguments that give a `docker build --network host` this machine's pip
    settings; local folders are served on 127.0.0.1 for the duration."""
    roots: dict[str, Path] = {}

    def lend(location: str, index: bool = True) -> str:
        folder = _local_folder(location)
        if folder is None:
            return location
        key = str(len(roots))
        roots[key] = folder.parent if index else folder  # an index links out to ../../files
        return f"http://127.0.0.1:{{port}}/{key}/{folder.name + '/' if index else ''}"

    pins = cpu_torch_pins(cfg)
    index = lend(cfg.index_url) if cfg.index_url else None
    extra = [lend(u) for u in cfg.extra_index_urls]
    if not pins and torch_index and reachable(torch_index):
        extra.append(torch_index)  # no CPU pair lent: the CPU index, as the Dockerfile's
    links = [lend(u, index=False) for u in cfg.find_links]
    constraints = "\n".join([*cfg.constraints, *pins]) + "\n"
    files = {"/constraints.txt": constraints.encode()}
    if cfg.cert and cfg.cert.is_file():
        files["/cert.pem"] = cfg.cert.read_bytes()
    handler = type("Handler", (_Handler,), {"roots": roots, "extra": files})
    try:  # one port every time: the build arguments, and so the layer cache, stay the same
        server = http.server.ThreadingHTTPServer(("127.0.0.1", LENT_PORT), handler)
    except OSError:  # taken: any port (the layers after the arguments are rebuilt)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    args = {"PIP_EXTRA_INDEX_URL": " ".join(u.replace("{port}", str(port)) for u in extra),
            "PIP_FIND_LINKS": " ".join(u.replace("{port}", str(port)) for u in links),
            "PIP_TRUSTED_HOST": " ".join(["127.0.0.1", *cfg.trusted_hosts]),
            "PIP_CONSTRAINT": f"http://127.0.0.1:{port}/constraints.txt",
            "PIP_CERT_URL": f"http://127.0.0.1:{port}/cert.pem" if "/cert.pem" in files else "",
            "TORCH_INDEX": ""}
    if index:
        args["PIP_INDEX_URL"] = index.replace("{port}", str(port))
    if cfg.timeout:
        args["PIP_DEFAULT_TIMEOUT"] = cfg.timeout
    try:
        yield {k: v for k, v in args.items() if v or k == "TORCH_INDEX"}
    finally:
        server.shutdown()
        server.server_close()


# -- the images --------------------------------------------------------------------------

def apt_mirror(release: str = "bookworm", folder: Path = Path("/etc/apt")) -> str:
    """The Debian archive this machine's apt uses for `release` (deb822 or one-line)."""
    for path in sorted([folder / "sources.list", *folder.glob("sources.list.d/*")]):
        if not path.is_file() or not path.name.endswith((".list", ".sources")):
            continue
        text = path.read_text()
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and release in suites.group(1).split():
                return uris.group(1)
        for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if m.group(2) == release:
                return m.group(1)
    return "http://deb.debian.org/debian"


def build_base(tag: str = BASE_TAG, mirror: Optional[str] = None, env: Optional[dict] = None,
               release: str = "bookworm", log=print) -> None:
    """debootstrap a minimal Debian with Python, `docker import` it as `tag`; pip may
    install system-wide in it, as in the python images."""
    if shutil.which("debootstrap") is None:
        raise ImageError("no debootstrap on this machine (apt-get install debootstrap), or "
                         "give an image you have: fedsim images build --base IMAGE")
    mirror = mirror or apt_mirror(release)
    with tempfile.TemporaryDirectory(prefix="fedsim-rootfs") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"debootstrap {release} from {mirror}")
        done = subprocess.run(["debootstrap", "--variant=minbase",
                               "--include=" + ",".join(DEBIAN_PACKAGES), release, str(rootfs),
                               mirror], capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-4:])
            raise ImageError(f"debootstrap failed (status {done.returncode}): {tail}")
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                               stdout=subprocess.PIPE)
        try:
            _docker("import", "--change", 'CMD ["python3"]', "--change",
                    "ENV LANG=C.UTF-8", "-", tag, env=env, stdin=tar.stdout,
                    what="docker import of the root file system")
        finally:
            tar.stdout.close()
            tar.wait()


def _build(tag: str, dockerfile: Path, args: dict, env: Optional[dict], target: str = "",
           what: str = "", source: str = "") -> None:
    cmd = ["build", "--network", "host", "-t", tag, "-f", str(dockerfile)]
    if source:
        cmd += ["--label", f"fedsim.source={source}"]
    for k, v in args.items():
        cmd += ["--build-arg", f"{k}={v}"]
    if target:
        cmd += ["--target", target]
    _docker(*cmd, str(ROOT), env={**(env or {}), "DOCKER_BUILDKIT": "0"}, what=what or tag)


def pull_official(env: Optional[dict] = None, timeout: float = 120) -> bool:
    """The official flwr images at the pinned version, where a registry is reachable."""
    for tag in flwr_tags().values():
        try:
            if _docker("pull", tag, env=env, check=False, timeout=timeout).returncode != 0:
                return False
        except subprocess.TimeoutExpired:
            return False
    return True


@dataclass
class Built:
    tag: str
    seconds: float  # 0.0: it was there already
    size_mb: float


def build_all(base: Optional[str] = None, env: Optional[dict] = None, pull: bool = True,
              force: bool = False, mirror: Optional[str] = None,
              torch_index: str = "https://download.pytorch.org/whl/cpu",
              log=print) -> list[Built]:
    """Every image the compose file names; one already tagged from the same inputs (or a
    pulled official one) is kept unless `force`."""
    import os

    env = {**os.environ, **(env or {})}
    out = []

    def step(tag: str, make, source: Optional[tuple] = None) -> None:
        if image_exists(tag, env, source) and not force:
            log(f"{tag}: present, kept")
            out.append(Built(tag, 0.0, image_size_mb(tag, env)))
            return
        started = time.monotonic()
        make()
        out.append(Built(tag, time.monotonic() - started, image_size_mb(tag, env)))
        log(f"{tag}: built in {out[-1].seconds:.0f} s, {out[-1].size_mb:.0f} MB")

    base_tag = base or BASE_TAG
    if base is None:
        step(BASE_TAG, lambda: build_base(BASE_TAG, mirror, env, log=log))
    elif not image_exists(base, env):
        raise ImageError(f"--base {base}: no such image in this Docker engine")
    pip = read_pip_config()
    with lent_pip_config(pip, torch_index) as args:
        log("pip settings lent to the builds: " + shlex.join(f"{k}={v}" for k, v in
                                                            args.items() if v))
        args = {**args, "BASE_IMAGE": base_tag}
        app = source_digest(*(ROOT / p for p in APP_INPUTS))
        step(APP_TAG, lambda: _build(APP_TAG, ROOT / "Dockerfile", args, env, source=app),
             (app,))
        flwr = source_digest(*(ROOT / p for p in FLWR_INPUTS), extra=FLWR_VERSION)
        official = (pull and not force and not all(image_exists(t, env)
                                                     for t in flwr_tags().values())
                    and pull_official(env))
        if official:
            log("official flwr images pulled")
        for role, tag in flwr_tags().items():
            step(tag, lambda role=role, tag=tag: _build(
                tag, ROOT / "deploy" / "flwr.Dockerfile",
                {**args, "FLWR_VERSION": FLWR_VERSION}, env, target=role, source=flwr),
             (flwr, ""))
    return out
