"""Flower's DP mods and strategy wrappers inside a real simulated run."""

import math

import pytest
import torch

from clients.local import train_round
from fedsim.capture import list_captures, load_capture
from fedsim.defense_params import CentralDPParams
from fedsim.experiment import experiment_for
from fedsim.privacy import rdp_epsilon
from lab.orchestration.simulation import run_simulation
from tests.helpers import tiny_config


def _flat(d, before):
    return torch.cat([(d[k] - before[k]).flatten().float() for k in d])


@pytest.mark.parametrize("defense", [
    {"name": "flower_local_dp", "params": {"clipping_norm": 0.5, "epsilon": 5.0}},
    {"name": "flower_central_dp", "params": {"side": "client", "clipping_norm": 0.5,
                                             "noise_multiplier": 0.1}},
    {"name": "flower_central_dp", "params": {"side": "server", "clipping_norm": 0.5,
                                             "noise_multiplier": 0.1}},
])
def test_flower_dp_run_completes_and_changes_what_leaves_the_client(tmp_path, defense):
    cfg = tiny_config(tmp_path, federation={"num_rounds": 2, "local_steps": 3},
                      defenses=[defense], capture={"rounds": [1]})
    result = run_simulation(cfg)
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    # the epsilon each round's row reports, and what it bounds
    p = {**CentralDPParams().model_dump(), **defense["params"]}
    spent = [(r["dp_epsilon"], r["dp_delta"], r["dp_accounting"]) for r in result.rounds[1:]]
    if defense["name"] == "flower_local_dp":  # basic composition of the per-round budget
        assert [s[0] for s in spent] == [5.0, 10.0]
        assert [s[1] for s in spent] == pytest.approx([1e-5, 2e-5])
        assert spent[0][2].startswith("client-level local DP")
    else:  # equal weights (3 steps of 16 each): z per round, RDP without amplification
        assert [s[0] for s in spent] == pytest.approx(
            [rdp_epsilon([(p["noise_multiplier"], 1.0, r)], p["delta"]) for r in (1, 2)])
        assert spent[0][2].startswith("client-level") and "not against the server" in spent[0][2]
    exp = experiment_for(cfg)
    for path in list_captures(result.run_dir):
        cap = load_capture(path)
        plain = train_round(exp, cap.weights_before, 1, cap.partition_id, [], torch.device("cpu"))
        sent = _flat(cap.update, cap.weights_before)
        raw = _flat(plain.update, cap.weights_before)
        assert raw.norm() > 0.5  # so that clipping to 0.5 has work to do
        if defense.get("params", {}).get("side") == "server":
            # server-side DP clips and noises the aggregate only: the server saw the raw update
            torch.testing.assert_close(sent, raw, rtol=1e-5, atol=1e-6)
        elif defense["name"] == "flower_central_dp":
            # client-side clipping: the update is the raw one scaled down to the bound
            assert sent.norm() == pytest.approx(0.5, rel=1e-4)
            torch.testing.assert_close(sent, raw * (0.5 / raw.norm()), rtol=1e-4, atol=1e-6)
        else:
            # local DP: clipped, then Gaussian noise on every entry with Flower's standard
            # deviation sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon
            p = defense["params"]
            std = 1.0 * math.sqrt(2 * math.log(1.25 / 1e-5)) / p["epsilon"]
            noise = sent - raw * (0.5 / raw.norm())
            assert noise.numel() > 1000
            assert noise.std().item() == pytest.approx(std, rel=0.1)
            assert abs(noise.mean().item()) < 0.1 * std


def test_dpsgd_budget_accumulates_in_the_clients_flower_state(tmp_path):
    """Each client's epsilon grows round after round: its DP steps live in the node state."""
    cfg = tiny_config(tmp_path, federation={"num_rounds": 3, "local_steps": 2},
                      defenses=[{"name": "dpsgd"}])
    result = run_simulation(cfg)
    eps = {}
    for path in list_captures(result.run_dir):
        cap = load_capture(path)
        eps.setdefault(cap.partition_id, []).append(cap.facts.client_metrics["dp-epsilon"])
    for series in eps.values():
        assert len(series) == 3 and series[0] < series[1] < series[2]
    # the round's row: the largest client epsilon so far, record-level
    assert result.rounds[-1]["dp_epsilon"] == max(s[-1] for s in eps.values())
    assert result.rounds[-1]["dp_accounting"].startswith("record-level")
