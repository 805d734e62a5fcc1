"""`fedsim images build`: the images docker-compose.yml runs, made without an image
registry (lab/images.py): a debootstrap Debian base, fedsim's app image, stand-ins for the
official flwr images at the pinned version (pulled instead where a registry answers)."""

from __future__ import annotations

import sys
from pathlib import Path

HELP = "build the compose file's images locally (offline hosts)"


def add_arguments(p) -> None:
    p.add_argument("action", choices=["build"])
    p.add_argument("--base", metavar="IMAGE", help="an image with Python 3.10+ and pip you "
                   "already have, instead of a debootstrap Debian")
    p.add_argument("--mirror", help="the Debian archive for debootstrap (default: the one "
                   "this machine's apt uses)")
    p.add_argument("--no-pull", dest="pull", action="store_false",
                   help="build the flwr stand-ins without trying the registry first")
    p.add_argument("--force", action="store_true", help="rebuild images already tagged")
    p.add_argument("--daemon", type=Path, metavar="DATA_ROOT", help="start a Docker daemon "
                   "of fedsim's own on this data root for the build, and stop it after "
                   "(the docker tests' daemon uses ~/.cache/fedsim/docker)")


def run(args) -> int:
    from contextlib import nullcontext

    from fedsim.runtime import Exit
    from lab.dockerd import DaemonError, own_daemon
    from lab.images import ImageError, build_all

    try:
        with own_daemon(args.daemon) if args.daemon else nullcontext(None) as env:
            built = build_all(base=args.base, env=env, pull=args.pull, force=args.force,
                              mirror=args.mirror)
    except (ImageError, DaemonError) as err:
        print(f"fedsim images build failed: {err}", file=sys.stderr)
        return Exit.FAILED
    for image in built:
        state = f"built in {image.seconds:.0f} s" if image.seconds else "kept"
        print(f"{image.tag}\t{image.size_mb:.0f} MB\t{state}")
    return Exit.OK
