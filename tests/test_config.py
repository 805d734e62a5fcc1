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
    """Structure (fedsim.config) and registries (lab.validation) alike: one line."""
    from lab.validation import check_registries

    with pytest.raises(ConfigError) as err:
        check_registries(from_dict(data))
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
    from lab.cli import main

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
    from lab.validation import validate

    for path in files:
        validate(load(path))


@pytest.mark.parametrize("data,needle", [
    ({"federation": {"num_rounds": True}}, "federation.num_rounds"),
    ({"federation": {"lr": float("inf")}}, "finite"),
    ({"name": "../x"}, "field 'name'"),
    ({"capture": {"rounds": [1, 99, -3]}}, "capture.rounds entry 99"),
    ({"attack": {"enabled": True, "clients": []}}, "attack.clients"),
    ({"seed": 2**63 - 1}, "field 'seed'"),  # scikit-learn's random_state message before
    ({"seed": 2**32}, "less than 4294967296"),
    ({"data": {"name": "folder", "root": "x", "image_shape": [3, 60000, 60000]}},
     "data.image_shape"),  # a MemoryError building the model before
])
def test_values_that_used_to_pass_silently_are_refused(data, needle):
    with pytest.raises(ConfigError) as err:
        from_dict(data)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_files_get_one_line(tmp_path, capsys, caplog, monkeypatch):
    import logging

    from lab.cli import main

    latin = tmp_path / "latin.toml"
    latin.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    cases = [(latin, "not UTF-8"), (tmp_path, "is a folder")]
    for path, needle in cases:
        assert main(["config", "check", str(path)]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err
    # main() gives fedsim's logger its own terminal handler and stops propagation; caplog
    # listens at the root (the test failed alone, passing only after a test that reset it)
    monkeypatch.setattr(logging.getLogger("fedsim"), "propagate", True)
    with caplog.at_level("WARNING", logger="fedsim"):
        load(empty)
    assert "is empty" in caplog.text


def test_checks_that_need_the_data_agree_between_check_and_run(tmp_path, capsys):
    """`config check` runs the same data-dependent checks as `run`: an impossible
    partition and an unwritable output folder are one line from both."""
    from lab.cli import main
    from fedsim.experiment import check_runnable

    blocker = tmp_path / "a-file"  # a folder cannot be made under a file, even by root
    blocker.write_text("")
    cases = [({"data": {"max_train": 1}, "federation": {"num_clients": 50}}, "num_clients"),
             ({"data": {"partition": "dirichlet", "alpha": 0.001},
               "federation": {"num_clients": 50}}, "alpha"),
             ({"output_dir": str(blocker / "runs")}, "output_dir")]
    for sections, needle in cases:
        cfg = from_dict({"output_dir": str(tmp_path), **sections})
        with pytest.raises(ConfigError, match=needle):
            check_runnable(cfg)
        path = tmp_path / "c.toml"
        path.write_text(cfg.to_toml())
        assert main(["config", "check", str(path)]) == 2
        assert needle in capsys.readouterr().err


def test_every_shipped_sweep_file_is_valid(tmp_path, monkeypatch):
    """Each cell of each sweep under experiments/sweeps validates (CPU scale). Where Debian's
    Fashion-MNIST is not installed, its cells validate against small files of the same
    format in its default folder's place (the missing-files message is tested in
    tests/test_fashion_mnist.py)."""
    from pathlib import Path

    from fedsim.data import fashion_mnist
    from lab.sweep import load_sweep
    from tests.helpers import write_fashion_mnist

    if not all((fashion_mnist.DEFAULT_ROOT / n).is_file()
               for pair in fashion_mnist.FILES.values() for n in pair):
        monkeypatch.setattr(fashion_mnist, "DEFAULT_ROOT",
                            write_fashion_mnist(tmp_path / "fashion", train=3000, test=500))

    files = sorted((Path(__file__).resolve().parents[1] / "experiments" / "sweeps").glob("*.toml"))
    assert {f.stem for f in files} >= {"paper_assumptions", "paper_defenses", "batch_size",
                                       "training_stage"}
    try:
        for path in files:
            name, cells = load_sweep(path)
            assert cells and name
    finally:  # nothing loaded from the stand-in files outlives the test
        from fedsim import experiment
        from fedsim.data import datasets

        datasets._load_cached.cache_clear()
        experiment._cached.cache_clear()


def test_a_billion_rounds_is_refused_before_any_list_of_them_is_built(tmp_path):
    """federation.num_rounds has a maximum, checked before the schedules are expanded: a
    billion rounds with every round attacked and captured was a MemoryError. Run in a child
    whose address space is capped, so a regression fails the test instead of the machine."""
    import subprocess
    import sys

    code = (
        "import resource, sys\n"
        "from fedsim.config import ConfigError, from_dict\n"
        "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (used + 2**30, resource.RLIM_INFINITY))\n"
        "try:\n"
        "    from_dict({'federation': {'num_rounds': 10**9}, 'capture': {'rounds': 'all'},\n"
        "               'attack': {'enabled': True, 'rounds': 'all'}})\n"
        "except ConfigError as err:\n"
        "    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip()
    assert "federation.num_rounds" in line and "100000" in line and "\n" not in line


def test_a_capture_volume_beyond_the_free_disk_is_refused(tmp_path, monkeypatch, capsys):
    """capture.rounds = "all" stores the global weights and every client's update of every
    round: when that is more than the output folder's disk holds, config check says so in
    one line naming the fields, before any data is loaded."""
    import shutil

    from lab.cli import main
    from lab.validation import validate

    huge = tmp_path / "huge.toml"
    huge.write_text(from_dict({
        "output_dir": str(tmp_path / "runs"), "data": {"name": "natural32"},
        "model": {"name": "resnet18", "width": 64},
        "federation": {"num_rounds": 100000}}).to_toml())  # ~13 TB of captures
    assert main(["config", "check", str(huge)]) == 2
    err = capsys.readouterr().err.strip()
    assert "capture.rounds" in err and "federation.num_rounds" in err and "\n" not in err
    assert "TB" in err and "free" in err

    small = from_dict({"output_dir": str(tmp_path / "runs"), "device": "cpu",
                       "federation": {"num_rounds": 50}})
    validate(small)  # a few MB: fine
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda path: real(path)._replace(free=200_000))
    with pytest.raises(ConfigError, match=r"capture\.rounds.*federation\.num_rounds"):
        validate(small)
    listed = from_dict({**small.to_dict(), "capture": {"rounds": [1]}})
    validate(listed)  # one captured round (about 100 kB) fits in 200 kB


@pytest.mark.parametrize("below, needle", [("", "is a file"), ("sub", "cannot be created")])
def test_certs_into_a_file_is_one_line(tmp_path, capsys, below, needle):
    from lab.cli import main

    (tmp_path / "a-file").write_text("")
    target = tmp_path / "a-file" / below if below else tmp_path / "a-file"
    assert main(["certs", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and str(target) in err and "\n" not in err
    assert main(["certs", str(tmp_path / "certs"), "--nodes", "-1"]) == 2
    assert "--nodes -1" in capsys.readouterr().err and not (tmp_path / "certs").exists()
    assert main(["certs", str(tmp_path / "certs"), "--nodes", "1"]) == 0  # and a folder works
    assert oct((tmp_path / "certs" / "supernode-0.key").stat().st_mode & 0o777) == "0o600"


def test_attack_names_come_from_the_attackers_registries(tmp_path):
    """init, compile and distance accept exactly the attacker's registered names, and the
    Budget is the [attack] section's optimiser fields, defaults included."""
    import pytest

    from attacker.distances import DISTANCES
    from attacker.engine import MODES
    from attacker.problem import INITS, Budget, budget_of
    from fedsim.config import OPTIMISER_FIELDS, AttackConfig, ConfigError
    from tests.helpers import tiny_config

    for field, allowed in (("init", INITS), ("compile", MODES), ("distance", DISTANCES)):
        for name in allowed:
            tiny_config(tmp_path, attack={field: name})
        with pytest.raises(ConfigError, match=rf"attack\.{field} 'nope' is not one of"):
            tiny_config(tmp_path, attack={field: "nope"})
    assert Budget().model_dump() == AttackConfig().model_dump(include=set(OPTIMISER_FIELDS))
    a = AttackConfig(iterations=7, lr=0.3, init="zeros")
    assert budget_of(a).model_dump() == a.model_dump(include=set(OPTIMISER_FIELDS))


def test_attack_slots_default_to_the_cpus_a_local_run_has_for_them():
    from lab.orchestration.simulation import attack_slots

    assert attack_slots(from_dict({}), 2) == 2
    assert attack_slots(from_dict({"simulation": {"cpus_per_attack": 2}}), 2) == 1
    assert attack_slots(from_dict({"simulation": {"cpus_per_attack": 4}}), 2) == 1
    assert attack_slots(from_dict({"simulation": {"attack_slots": 3}}), 2) == 3
    with pytest.raises(ConfigError, match="attack_slots"):
        from_dict({"simulation": {"attack_slots": 0}})


def test_every_entry_point_scores_lpips_with_the_configs_network():
    """fedsim attack on a foreign capture and lab.api.score used "alex" while runs used the
    config's "vgg": one default now, the config's."""
    import inspect

    from fedsim.config import EvaluationConfig
    from lab.api import score
    from lab.foreign import ForeignSettings

    assert ForeignSettings(model="m:f").lpips_net == EvaluationConfig().lpips_net == "vgg"
    assert inspect.signature(score).parameters["lpips_net"].default is None  # -> the config's
