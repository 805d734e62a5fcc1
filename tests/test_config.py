import pytest

from fedsim.config import ConfigError, ExperimentConfig, from_dict, load


def test_default_experiment_round_trips(tmp_path):
    cfg = load()
    path = tmp_path / "again.toml"
    path.write_text(cfg.to_toml())
    assert load(path) == cfg


def test_every_field_has_a_default():
    assert from_dict({}) == ExperimentConfig()


@pytest.mark.parametrize("data, field, allowed", [
    ({"federation": {"num_clents": 3}}, "federation.num_clents", "unknown field"),
    ({"federation": {"num_clients": 0}}, "federation.num_clients", "greater than or equal to 1"),
    ({"model": {"name": "vgg"}}, "model.name", "'lenet', 'convnet' or 'resnet18'"),
    ({"seed": "x"}, "seed", "valid integer"),
    ({"device": "tpu"}, "device", "'auto', 'cpu' or 'cuda'"),
    ({"federation": {"lr": -1}}, "federation.lr", "greater than 0"),
    ({"federation": {"num_clients": 2, "clients_per_round": 3}}, "clients_per_round", "at most"),
    ({"data": {"name": "cifar10"}}, "data.root", "required"),
    ({"attack": {"rounds": [9]}}, "attack.rounds", "outside"),
    ({"bogus": 1}, "bogus", "unknown field"),
    ({"attack": {"enabled": True, "name": "idlg"}}, "idlg", "batch_size = 1"),
    ({"attack": {"enabled": True, "name": "fedavg_replay"}, "federation": {"algorithm": "fedsgd"}},
     "fedavg_replay", "must be 'fedavg'"),
])
def test_bad_input_names_field_and_what_is_allowed(data, field, allowed):
    with pytest.raises(ConfigError) as err:
        from_dict(data)
    message = str(err.value)
    assert field in message and allowed in message
    assert "\n" not in message  # one clear line, not a validation dump


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_cli_config_check_reports_error(tmp_path, capsys):
    from fedsim.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("[federation]\nnum_clents = 3\n")
    assert main(["config", "check", str(bad)]) == 2
    assert "federation.num_clents" in capsys.readouterr().err
    assert main(["config", "show"]) == 0
    assert "[federation]" in capsys.readouterr().out


def test_every_shipped_experiment_file_is_valid():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.toml"))
    assert files
    for path in files:
        load(path)
