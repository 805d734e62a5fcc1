"""Secure aggregation with Flower's SecAgg+ (legacy workflow path of flwr 1.42).

Clients mask their quantised updates with pairwise and self masks (`secaggplus_mod`);
the server's `SecAggPlusWorkflow` unmasks only the weighted sum, so the honest-but-curious
server holds the round's aggregate and never an individual update.
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from clients.defenses.base import Defense, DefenseParams


class SecAggPlus(Defense):
    name = "secagg_plus"
    stage = "transport"
    legacy_workflow = True

    class Params(DefenseParams):
        num_shares: int = Field(default=3, ge=3, description="Flower requires more than 2")
        reconstruction_threshold: int = Field(default=2, ge=1)
        clipping_range: float = Field(default=8.0, gt=0, description="|value| bound before quantising")
        max_weight: Optional[float] = Field(
            default=None, gt=0,
            description="largest num-examples a client reports; default: derived from the "
                        "config (a loose bound costs quantisation precision)")

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

    def workflow(self, exp):
        from flwr.server.workflow import SecAggPlusWorkflow

        p = self.params
        return SecAggPlusWorkflow(num_shares=p.num_shares,
                                  reconstruction_threshold=p.reconstruction_threshold,
                                  clipping_range=p.clipping_range,
                                  max_weight=p.max_weight or max_examples_per_round(exp))


def max_examples_per_round(exp) -> float:
    """The most examples any client can report in one round (its SecAgg+ weight)."""
    fed = exp.cfg.federation
    largest = max(len(p) for p in exp.partitions)
    if fed.algorithm == "fedsgd":
        return float(min(fed.batch_size, largest))
    if fed.local_steps is not None:
        return float(fed.local_steps * fed.batch_size)
    return float(fed.local_epochs * largest)
