import pytest
import torch

from fedsim.models import batchnorm_layers, build_model


@pytest.mark.parametrize("name, shape", [("lenet", (1, 8, 8)), ("lenet", (3, 32, 32)),
                                         ("convnet", (1, 8, 8)), ("convnet", (3, 32, 32)),
                                         ("resnet18", (3, 32, 32))])
def test_models_forward(name, shape):
    m = build_model(name, shape, 10, [0.5] * shape[0], [0.25] * shape[0], "batch", 8)
    assert m(torch.rand(2, *shape)).shape == (2, 10)
    # normalisation constants are not state: updates carry only trainable state and BN stats
    assert not any(k.startswith("normalize") for k in m.state_dict())


@pytest.mark.parametrize("norm, count", [("batch", 20), ("group", 0), ("none", 0)])
def test_resnet_norm_setting(norm, count):
    m = build_model("resnet18", (3, 32, 32), 10, [0.5] * 3, [0.25] * 3, norm, 8)
    assert len(batchnorm_layers(m)) == count


def test_same_seed_same_init_in_every_process(tmp_path):
    """Clients, server and evaluator each build the round-0 model in their own process:
    it must come out the same there, whatever the process's random state, and differ for
    another seed."""
    import subprocess
    import sys

    from fedsim.experiment import experiment_for
    from tests.helpers import tiny_config

    cfg = tiny_config(tmp_path)
    path = tmp_path / "init.pt"
    code = ("import sys, torch; torch.manual_seed(12345); torch.rand(7)\n"
            "from fedsim.config import load; from fedsim.experiment import experiment_for\n"
            f"torch.save(experiment_for(load({str(tmp_path / 'c.toml')!r})).new_model()"
            f".state_dict(), {str(path)!r})")
    (tmp_path / "c.toml").write_text(cfg.to_toml())
    subprocess.run([sys.executable, "-c", code], check=True)
    there = torch.load(path, weights_only=True)
    torch.rand(3)  # this process's random state moves on
    here = experiment_for(cfg).new_model().state_dict()
    assert all(torch.equal(here[k], there[k]) for k in here)
    other = experiment_for(tiny_config(tmp_path, seed=1)).new_model().state_dict()
    assert not all(torch.equal(here[k], other[k]) for k in here)


def test_resnet_refuses_tiny_images(tmp_path):
    from fedsim.config import ConfigError
    from tests.helpers import tiny_config

    with pytest.raises(ValueError, match="at least 32x32"):
        build_model("resnet18", (1, 8, 8), 10, [0.5], [0.25], "batch", 8)
    with pytest.raises(ConfigError, match="model.name 'resnet18' needs images"):
        tiny_config(tmp_path, model={"name": "resnet18"})
