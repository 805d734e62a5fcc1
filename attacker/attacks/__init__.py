"""The attack registry: adding an attack is one module and one line here."""

from attacker.attacks.base import Attack
from attacker.attacks.dlg import DLG
from attacker.attacks.fedavg import FedAvgNaive, FedAvgReplay
from attacker.attacks.gradinversion import GradInversion
from attacker.attacks.idlg import IDLG
from attacker.attacks.inverting_gradients import InvertingGradients

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (DLG, IDLG, InvertingGradients, GradInversion, FedAvgReplay, FedAvgNaive)
}

__all__ = ["ATTACKS", "Attack"]
