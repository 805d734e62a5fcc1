"""The defense registry: adding a defense is one module and one line here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clients.defenses.base import STAGES, Defense

if TYPE_CHECKING:
    from fedsim.config import ExperimentConfig

DEFENSES: dict[str, type[Defense]] = {}


def register(cls: type[Defense]) -> type[Defense]:
    DEFENSES[cls.name] = cls
    return cls


def build_defenses(cfg: "ExperimentConfig") -> list[Defense]:
    return [DEFENSES[d.name](**d.params) for d in cfg.defenses]


def validate_defense_list(cfg: "ExperimentConfig") -> None:
    """Params are valid and stages come in pipeline order (data before update, ...)."""
    built = build_defenses(cfg)
    order = [STAGES.index(d.stage) for d in built]
    for i in range(1, len(order)):
        if order[i] < order[i - 1]:
            raise ValueError(
                f"defenses: {built[i].name!r} ({built[i].stage} stage) cannot come after "
                f"{built[i - 1].name!r} ({built[i - 1].stage} stage); list defenses in the "
                f"order a round applies them: {' -> '.join(STAGES)}"
            )
    for d in built:
        if hasattr(d, "check_config"):
            d.check_config(cfg)


__all__ = ["DEFENSES", "Defense", "build_defenses", "register", "validate_defense_list"]
