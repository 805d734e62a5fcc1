"""Flower's differential privacy, configured from the experiment file.

`flower_local_dp`: Flower's `LocalDpMod` on every client: clip the model update to
`clipping_norm`, add Gaussian noise for (epsilon, delta) local DP with `sensitivity`.
`flower_central_dp`: Flower's central DP with fixed clipping, server side (the server clips
and noises the aggregate: it still sees each individual update) or client side (clients
clip with `fixedclipping_mod`, the server adds noise). The client halves are here; the
server's strategy wrappers are in `server/transport.py`.

Both act on FedAvg weight updates: Flower's mods compute new - old weights, which is
meaningless for FedSGD gradients, so FedSGD is rejected at config time.

Accounting: LocalDpMod's (epsilon, delta) are per round, so each client reports their basic
composition over the rounds it took part in (its round count lives in its persistent
state); central DP is accounted on the server (`server/transport.py`).
"""

from __future__ import annotations

from pydantic import Field

from clients.defenses.base import Defense, DefenseParams
from fedsim.defense_params import CentralDPParams
from fedsim.record_keys import DP_DELTA, DP_EPSILON


class _FlowerDP(Defense):
    stage = "transport"
    differentially_private = True

    def check_config(self, cfg) -> None:
        if cfg.federation.algorithm != "fedavg":
            raise ValueError(f"defenses entry {self.name!r} needs federation.algorithm = "
                             "'fedavg' (Flower's DP mods clip weight updates)")
        from fedsim.models import batchnorm_layers, structure_probe

        probe = structure_probe(cfg.model, cfg.data.shape)
        if any(bn.track_running_stats for bn in batchnorm_layers(probe)):
            raise ValueError(f"defenses entry {self.name!r}: noise cannot be added to "
                             "BatchNorm's integer counters; use model.norm 'group' or 'none'")


class FlowerLocalDP(_FlowerDP):
    name = "flower_local_dp"
    accounting = ("client-level local DP (the client's whole update, against anyone who "
                  "sees it), basic composition of LocalDpMod's per-round (epsilon, delta) "
                  "over the rounds the client took part in")

    class Params(DefenseParams):
        clipping_norm: float = Field(default=1.0, gt=0)
        sensitivity: float = Field(default=1.0, gt=0)
        epsilon: float = Field(default=10.0, gt=0)
        delta: float = Field(default=1e-5, gt=0, lt=1)

    def client_mods(self):
        from flwr.clientapp.mod import LocalDpMod

        p = self.params
        return [LocalDpMod(p.clipping_norm, p.sensitivity, p.epsilon, p.delta)]

    def account(self, state: dict, fed) -> dict[str, float]:
        """Basic composition: after r rounds, (r epsilon, r delta)."""
        rounds = state["dp_rounds"] = int(state.get("dp_rounds", 0)) + 1
        return {DP_EPSILON: rounds * self.params.epsilon, DP_DELTA: rounds * self.params.delta}


class FlowerCentralDP(_FlowerDP):
    name = "flower_central_dp"

    Params = CentralDPParams  # the server half reads it too (server/transport.py)

    def client_mods(self):
        if self.params.side == "client":
            from flwr.clientapp.mod import fixedclipping_mod

            return [fixedclipping_mod]
        return []
