"""Secure aggregation with Flower's SecAgg+ (legacy workflow path of flwr 1.42).

Clients mask their quantised updates with pairwise and self masks (`secaggplus_mod`);
the server's `SecAggPlusWorkflow` (server/transport.py) unmasks only the weighted sum, so
the honest-but-curious server holds the round's aggregate and never an individual update.
"""

from __future__ import annotations

from clients.defenses.base import Defense
from fedsim.defense_params import SecAggPlusParams


class SecAggPlus(Defense):
    name = "secagg_plus"
    stage = "transport"
    legacy_workflow = True

    Params = SecAggPlusParams  # the server half reads it too (server/transport.py)

    def check_config(self, cfg) -> None:
        fed = cfg.federation
        per_round = fed.clients_per_round or fed.num_clients
        p = self.params
        if p.num_shares > per_round:
            raise ValueError(
                f"defenses entry 'secagg_plus': num_shares ({p.num_shares}) must be at most "
                f"the clients per round ({per_round}); SecAgg+ needs at least 3 clients")
        if p.reconstruction_threshold >= p.num_shares:
            raise ValueError("defenses entry 'secagg_plus': reconstruction_threshold must be "
                             "below num_shares")
        from clients.defenses import DEFENSES

        others = [d.name for d in cfg.defenses
                  if d.name != self.name and DEFENSES[d.name].stage == "transport"]
        if others:
            raise ValueError(f"defenses: 'secagg_plus' runs Flower's legacy workflow and cannot "
                             f"be combined with {others}")

    def client_mods(self) -> list:
        from flwr.client.mod import secaggplus_mod

        return [secaggplus_mod]
