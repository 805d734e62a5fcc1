"""Flower's SecAgg+ in a simulated run: the server keeps only the aggregate."""

import pytest
import torch

from clients.local import train_round
from fedsim.capture import AGGREGATE, list_captures, load_capture
from fedsim.config import ConfigError
from fedsim.experiment import experiment_for
from lab.orchestration.simulation import run_experiment
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("secagg"),
                      federation={"num_clients": 3, "num_rounds": 2, "algorithm": "fedsgd",
                                  "batch_size": 2},
                      defenses=[{"name": "secagg_plus"}], capture={"rounds": [1]},
                      attack={"enabled": True, "rounds": [1], "clients": [0],
                              "iterations": 50, "restarts": 1})
    return cfg, run_experiment(cfg, progress=False)


def test_round_completes_and_server_holds_only_the_aggregate(secure_run):
    cfg, result = secure_run
    assert [r["round"] for r in result.rounds] == [0, 1, 2]
    (path,) = list_captures(result.run_dir)
    cap = load_capture(path)
    assert cap.partition_id == AGGREGATE and cap.facts.partitions == (0, 1, 2)
    exp = experiment_for(cfg)
    replays = [train_round(exp, cap.weights_before, 1, pid, [], torch.device("cpu"))
               for pid in range(3)]
    total = sum(r.num_examples for r in replays)
    for key, value in cap.update.items():
        expected = sum(r.update[key] * r.num_examples for r in replays) / total
        # SecAgg+ quantises to 2**22 levels over [-8, 8] per client: error ~ 1e-5
        torch.testing.assert_close(value, expected, rtol=0, atol=5e-5)
        for r in replays:  # and it is no individual client's update
            assert not torch.allclose(value, r.update[key], atol=5e-5)


def test_attack_falls_back_to_the_aggregate_and_says_so(secure_run):
    _, result = secure_run
    (rec,) = result.attacks
    assert rec["partition_id"] == AGGREGATE and "secure aggregation" in rec["target"]
    assert rec["batch_size"] == 6  # three clients' batches of two
    assert (result.run_dir / rec["grid"]).is_file()


def test_secagg_needs_three_clients(tmp_path):
    with pytest.raises(ConfigError, match="at least 3 clients"):
        tiny_config(tmp_path, defenses=[{"name": "secagg_plus"}])
