"""What the command modules share: exit statuses, the argparse pieces the config and the
registries define, and the console lines every command prints alike."""

from __future__ import annotations

import argparse
import logging
import sys
import typing

from fedsim.config import ConfigError
from fedsim.runtime import Exit


def exit_status(result) -> int:
    """OK, CLIENT_FAILURES or ATTACK_FAILURES for a finished run, each counted in a line."""
    failures = result.client_failures
    if failures:
        print(f"client failures: {sum(failures.values())} in rounds "
              f"{', '.join(map(str, failures))} (causes in metrics.jsonl and run.log)",
              file=sys.stderr)
    failed_attacks = [rec for rec in result.attacks if "error" in rec]
    if failed_attacks:
        print(f"attack failures: {len(failed_attacks)} of {len(result.attacks)} (rounds "
              f"{', '.join(sorted({str(r['round']) for r in failed_attacks}))}; errors in "
              "leakage.jsonl and run.log)", file=sys.stderr)
        return Exit.ATTACK_FAILURES
    return Exit.CLIENT_FAILURES if failures else Exit.OK


def choices_of(model, name: str) -> list:
    """The values a config field's Literal allows (the one place they are written)."""
    annotation = model.model_fields[name].annotation
    for arg in typing.get_args(annotation) or (annotation,):
        if typing.get_origin(arg) is typing.Literal:
            return list(typing.get_args(arg))
    return list(typing.get_args(annotation))


def add_optimiser_options(parser: argparse.ArgumentParser) -> None:
    """One option per optimiser field of the `[attack]` section (fedsim.config
    OPTIMISER_FIELDS), typed as the field, choices from the attacker's registries."""
    from attacker.distances import DISTANCES
    from attacker.engine import MODES
    from attacker.problem import INITS
    from fedsim.config import OPTIMISER_FIELDS, AttackConfig

    registries = {"init": INITS, "compile": MODES, "distance": DISTANCES,
                  "batch_restarts": choices_of(AttackConfig, "batch_restarts"),
                  "mixing": choices_of(AttackConfig, "mixing")}
    for name in OPTIMISER_FIELDS:
        field = AttackConfig.model_fields[name]
        flag = "--" + name.replace("_", "-")
        help_text = ((field.description + "; ") if field.description else "") + \
            f"default: the run's config.toml ({field.default!r} in a new config)"
        if name in registries:
            parser.add_argument(flag, choices=list(registries[name]), help=help_text)
        elif name == "signed":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, type=field.annotation, help=help_text)


def optimiser_overrides(args) -> dict:
    """The optimiser options given on the command line."""
    from fedsim.config import OPTIMISER_FIELDS

    return {n: getattr(args, n) for n in OPTIMISER_FIELDS if getattr(args, n) is not None}


def validated(model, data: dict):
    """A config section from CLI options, its errors as one ConfigError line."""
    from pydantic import ValidationError

    try:
        return model(**data)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None


def known_or_int(value: str):
    if value == "known":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected 'known' or an integer") from None


def positive(kind):
    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            number = 0
        if not 0 < number < float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {value!r}")
        return number

    return parse


def lpips_text(rec: dict) -> str:
    return f"{rec['lpips']:.3f}" if rec.get("lpips") is not None else "unavailable"


def quiet_flower(verbose: bool) -> None:
    """Flower's own console lines only with --verbose (they always reach run.log). Only
    the commands that start Flower import it: attacking and scoring need neither Flower
    nor Ray, so they work on a GPU host that has only torch (../shared/notes/gpu.md)."""
    import flwr.common.logger  # noqa: F401  (creates Flower's console handler)

    logging.getLogger("flwr").propagate = False  # its own handlers only, not the root's
    for handler in logging.getLogger("flwr").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.INFO if verbose else logging.WARNING)
