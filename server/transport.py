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
from fedsim.experiment import Experiment


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


STRATEGY_WRAPPERS: dict[str, Callable] = {"flower_central_dp": _central_dp}
WORKFLOWS: dict[str, Callable] = {"secagg_plus": _secagg_workflow}


def wrap_strategy(cfg: ExperimentConfig, strategy, num_sampled: int):
    """The strategy inside every configured server-side wrapper, in the listed order."""
    for d in cfg.defenses:
        if d.name in STRATEGY_WRAPPERS:
            strategy = STRATEGY_WRAPPERS[d.name](d.params, strategy, num_sampled)
    return strategy


def secure_workflow(cfg: ExperimentConfig, exp: Experiment) -> Optional[object]:
    """The fit workflow that replaces the plain round (SecAgg+), or None."""
    for d in cfg.defenses:
        if d.name in WORKFLOWS:
            return WORKFLOWS[d.name](d.params, exp)
    return None


def max_examples_per_round(exp: Experiment) -> float:
    """The most examples any client can report in one round (its SecAgg+ weight)."""
    fed = exp.cfg.federation
    largest = max(len(p) for p in exp.partitions)
    if fed.algorithm == "fedsgd":
        return float(min(fed.batch_size, largest))
    if fed.local_steps is not None:
        return float(fed.local_steps * fed.batch_size)
    return float(fed.local_epochs * largest)
