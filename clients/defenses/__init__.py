"""The defense registry: adding a defense is one module and one line here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clients.defenses.base import STAGES, Defense, ParamsError
from clients.defenses.dpsgd import DPSGD
from clients.defenses.flower_dp import FlowerCentralDP, FlowerLocalDP
from clients.defenses.gradprune import GradPrune
from clients.defenses.instahide import IntraInstaHide
from clients.defenses.mixup import MixUp
from clients.defenses.secagg import SecAggPlus

if TYPE_CHECKING:
    from fedsim.config import ExperimentConfig

DEFENSES: dict[str, type[Defense]] = {
    cls.name: cls
    for cls in (GradPrune, MixUp, IntraInstaHide, DPSGD, FlowerLocalDP, FlowerCentralDP,
                SecAggPlus)
}


def build_defenses(cfg: "ExperimentConfig") -> list[Defense]:
    return [DEFENSES[d.name](**d.params) for d in cfg.defenses]


def validate_defense_list(cfg: "ExperimentConfig") -> None:
    """Params are valid, stages come in pipeline order (data before update, ...), at most
    one defense replaces the training step, and each defense accepts the rest of the config."""
    built = []
    for i, d in enumerate(cfg.defenses):
        try:
            built.append(DEFENSES[d.name](**d.params))
        except ParamsError as err:
            where = f"defenses[{i}].params" + (f".{err.field}" if err.field else "")
            raise ValueError(f"{where}: {err.problem}") from None
    order = [STAGES.index(d.stage) for d in built]
    for i in range(1, len(order)):
        if order[i] < order[i - 1]:
            raise ValueError(
                f"defenses: {built[i].name!r} ({built[i].stage} stage) cannot come after "
                f"{built[i - 1].name!r} ({built[i - 1].stage} stage); list defenses in the "
                f"order a round applies them: {' -> '.join(STAGES)}"
            )
    for stage in ("training",):
        names = [d.name for d in built if d.stage == stage]
        if len(names) > 1:
            raise ValueError(f"defenses: at most one {stage}-stage defense, got {names}")
    private = [d.name for d in built if d.differentially_private]
    if len(private) > 1:
        raise ValueError(f"defenses: at most one differentially private defense, got "
                         f"{private} (each reports its own kind of epsilon, and their "
                         "combination is not accounted)")
    for d in built:
        d.check_config(cfg)


__all__ = ["DEFENSES", "Defense", "build_defenses", "validate_defense_list"]
