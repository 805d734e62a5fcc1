"""Your app's declared facts: bad declarations are refused naming the field, and the values
the server actually sent win over the declared fallbacks."""

import pytest

from fedsim.app_facts import AppFacts, FactsError


@pytest.mark.parametrize("fields, named", [
    ({"image_shape": (3, 32)}, "AppFacts.image_shape"),
    ({"num_classes": 1}, "AppFacts.num_classes"),
    ({"mean": (0.5,), "std": (0.25,)}, "AppFacts.mean has 1 values"),
    ({"mean": "0.5", "std": 0.25}, "AppFacts.mean '0.5' must be a number"),
    ({"mean": 0.5, "std": 0.0}, "AppFacts.std .* must be positive"),
    ({"mean": (0.5, 0.5, 0.5)}, "AppFacts.mean and AppFacts.std go together"),
    ({"pixel_range": (1.0, 0.0)}, "AppFacts.pixel_range"),
    ({"momentum": 1.5}, "AppFacts.momentum"),
    ({"lr": -0.1}, "AppFacts.lr"),
    ({"nesterov": True}, "AppFacts.nesterov"),
    ({"config_keys": {"learning_rate": "lr"}}, "AppFacts.config_keys"),
    ({"model": "no_colon"}, "AppFacts.model"),
])
def test_bad_declarations_name_the_field(fields, named):
    with pytest.raises(FactsError, match=named.replace("AppFacts.", r"AppFacts\.")):
        AppFacts(**{"image_shape": (3, 32, 32), "num_classes": 3, **fields})


def test_the_train_config_sent_wins_over_declared_values():
    facts = AppFacts(image_shape=(3, 8, 8), num_classes=4, lr=0.1, batch_size=4,
                     local_epochs=2, momentum=0.9, config_keys={"lr": "learning-rate"})
    meta = facts.resolve({"learning-rate": 0.02, "server-round": 3}, {"num-examples": 12})
    assert (meta["lr"], meta["batch_size"], meta["local_epochs"]) == (0.02, 4, 2)
    assert meta["optimizer"]["momentum"] == 0.9 and meta["distinct_examples"] == 12
    assert meta["train_config"] == {"learning-rate": 0.02, "server-round": 3}
    assert meta["mean"] == [0.0] * 3 and meta["normalised_input"] is False


def test_facts_load_from_toml(tmp_path):
    path = tmp_path / "facts.toml"
    path.write_text('image_shape = [1, 28, 28]\nnum_classes = 10\nmomentum = 0.9\n')
    assert AppFacts.from_toml(path).momentum == 0.9
    path.write_text('image_shape = [1, 28, 28]\nnum_classes = 10\nmomentm = 0.9\n')
    with pytest.raises(FactsError, match="unknown field.*momentm"):
        AppFacts.from_toml(path)


def test_one_number_normalises_every_channel():
    """As `fedsim attack --mean 0.45 --std 0.25` (tests/test_own_app.py checks both say the
    same for a wrong count)."""
    facts = AppFacts(image_shape=(3, 8, 8), num_classes=4, mean=0.45, std=0.25)
    assert (facts.mean, facts.std) == ((0.45,) * 3, (0.25,) * 3)
    meta = facts.resolve({}, {})
    assert meta["mean"] == [0.45] * 3 and meta["normalised_input"] is True
