"""The server-side halves of the transport-stage defenses, a registry by defense name.

Flower's central DP wraps the strategy (the server clips and noises the aggregate, or adds
noise to client-clipped updates); SecAgg+ replaces the round with Flower's legacy
`SecAggPlusWorkflow`, so the server only ever unmasks the sum. Each half reads its params
through the schema it shares with the client half (`fedsim/defense_params.py`); the client
halves (mods) are in `clients/defenses/`.
"""

from __future__ import annotations

from typing import Callable, Optional

from fedsim.config import ExperimentConfig
from fedsim.defense_params import CentralDPParams, SecAggPlusParams
from fedsim.data.batches import round_examples, steps_per_round
from fedsim.experiment import Experiment
from fedsim.privacy import rdp_epsilon


def _central_dp(params: dict, strategy, num_sampled: int):
    from flwr.serverapp.strategy import (DifferentialPrivacyClientSideFixedClipping,
                                         DifferentialPrivacyServerSideFixedClipping)

    p = CentralDPParams(**params)
    cls = (DifferentialPrivacyServerSideFixedClipping if p.side == "server"
           else DifferentialPrivacyClientSideFixedClipping)
    return cls(strategy, noise_multiplier=p.noise_multiplier, clipping_norm=p.clipping_norm,
               num_sampled_clients=num_sampled)


def _secagg_workflow(params: dict, exp: Experiment):
    from flwr.server.workflow import SecAggPlusWorkflow

    p = SecAggPlusParams(**params)
    return SecAggPlusWorkflow(num_shares=p.num_shares,
                              reconstruction_threshold=p.reconstruction_threshold,
                              clipping_range=p.clipping_range,
                              max_weight=p.max_weight or max_examples_per_round(exp))


class CentralDPAccount:
    """Client-level privacy of the global models under Flower's central DP with fixed
    clipping. Each round's release is one Gaussian mechanism: every update clipped to C,
    averaged with the round's FedAvg weights w (num-examples, sent in the clear, taken as
    public), noise of standard deviation z C / k added (Flower's `compute_stdv`, k the
    clients sampled); one client moves the average by at most max(w) C, so its noise
    multiplier is z / (k max(w)) (z itself under equal weights). Composed over rounds by
    Opacus' RDP analysis with sample rate 1: no amplification by client sampling, since
    Flower samples a fixed number of clients, which the Poisson analysis does not cover
    (Flower's own accountant refuses amplification under fixed clipping too)."""

    accounting = ("client-level (a client's whole data), RDP accountant (Opacus), Gaussian "
                  "per round without client-sampling amplification; of the global models, "
                  "not against the server, which sees each update")

    def __init__(self, params: dict, num_sampled: int):
        self.params, self.num_sampled = CentralDPParams(**params), num_sampled
        self.rounds: list[tuple[float, float, int]] = []

    def release(self, weights: list[float]) -> dict:
        """This round's release (its replies' FedAvg weights) composed with the earlier."""
        if weights and sum(weights) > 0:
            share = max(weights) / sum(weights)
            self.rounds.append((self.params.noise_multiplier / (self.num_sampled * share),
                                1.0, 1))
        return {"dp_epsilon": rdp_epsilon(self.rounds, self.params.delta),
                "dp_delta": self.params.delta, "dp_accounting": self.accounting}


STRATEGY_WRAPPERS: dict[str, Callable] = {"flower_central_dp": _central_dp}
ACCOUNTANTS: dict[str, Callable] = {"flower_central_dp": CentralDPAccount}
WORKFLOWS: dict[str, Callable] = {"secagg_plus": _secagg_workflow}


def wrap_strategy(cfg: ExperimentConfig, strategy, num_sampled: int):
    """The strategy inside every configured server-side wrapper, in the listed order."""
    for d in cfg.defenses:
        if d.name in STRATEGY_WRAPPERS:
            strategy = STRATEGY_WRAPPERS[d.name](d.params, strategy, num_sampled)
    return strategy


def central_accountant(cfg: ExperimentConfig) -> Optional[CentralDPAccount]:
    """The server's accountant of a server-side DP defense, or None."""
    fed = cfg.federation
    for d in cfg.defenses:
        if d.name in ACCOUNTANTS:
            return ACCOUNTANTS[d.name](d.params, fed.clients_per_round or fed.num_clients)
    return None


def secure_workflow(cfg: ExperimentConfig, exp: Experiment) -> Optional[object]:
    """The fit workflow that replaces the plain round (SecAgg+), or None."""
    for d in cfg.defenses:
        if d.name in WORKFLOWS:
            return WORKFLOWS[d.name](d.params, exp)
    return None


def max_examples_per_round(exp: Experiment) -> float:
    """The most examples any client can report in one round (its SecAgg+ weight); under
    Poisson sampling (DP-SGD) any step may draw the whole partition."""
    fed = exp.cfg.federation
    kwargs = dict(algorithm=fed.algorithm, batch_size=fed.batch_size,
                  local_epochs=fed.local_epochs, local_steps=fed.local_steps)
    if exp.sampling == "poisson":
        return float(max(len(p) * steps_per_round(len(p), **kwargs) for p in exp.partitions))
    return float(max(round_examples(len(p), **kwargs) for p in exp.partitions))
