"""`fedsim certs FOLDER`: a CA and SuperLink certificate (and SuperNode keys) for TLS."""

from __future__ import annotations

from pathlib import Path

HELP = "make a CA and SuperLink certificate (and node keys)"


def add_arguments(p) -> None:
    p.add_argument("folder", help="where to write them (deploy/certs for docker compose)")
    p.add_argument("--host", action="append", help="another name of the SuperLink")
    p.add_argument("--nodes", type=int, default=0, help="SuperNode key pairs to make")


def run(args) -> int:
    from lab.certs import make_certs

    for path in make_certs(Path(args.folder), tuple(args.host or ()), args.nodes):
        print(path)
    return 0
