"""`fedsim config show|check FILE`: the resolved config, or every check a run makes."""

from __future__ import annotations

import sys

from fedsim.config import load
from fedsim.runtime import Exit

HELP = "show the resolved config or check a file"


def add_arguments(p) -> None:
    p.add_argument("action", choices=["show", "check"])
    p.add_argument("file", nargs="?", help="experiment TOML (default: experiments/quick.toml)")


def run(args) -> int:
    if args.action == "show":
        print(load(args.file).to_toml(), end="")
        return 0
    if not args.file:
        print("fedsim config check needs a FILE", file=sys.stderr)
        return Exit.BAD_INPUT
    from lab.validation import validate

    validate(load(args.file))
    print(f"{args.file}: ok")
    return 0
