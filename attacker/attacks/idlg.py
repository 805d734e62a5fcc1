"""iDLG (Zhao et al. 2020): DLG with the label read analytically from the last layer's
gradient; defined for a batch of one."""

from attacker.attacks.dlg import DLG
from attacker.labels import idlg


class IDLG(DLG):
    name = "idlg"

    @classmethod
    def check_config(cls, cfg) -> None:
        fed = cfg.federation
        if fed.algorithm != "fedsgd" or fed.batch_size != 1:
            raise ValueError("attack.name 'idlg' needs one image per update: "
                             "federation.algorithm = 'fedsgd' and federation.batch_size = 1")

    def labels(self, obs, knowledge):
        if knowledge.batch_size != 1:
            raise ValueError("attack 'idlg' needs a batch of one (federation.batch_size = 1)")
        return idlg(obs.update, obs.model).to(next(obs.model.parameters()).device)
