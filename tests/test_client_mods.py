"""The ClientApp that `flwr run` loads (`clients.app:app`) applies the Flower mods of the
experiment each message's run names, not those of the experiment visible when the module
was imported (before: the default experiment's, so Flower's DP mods of
`--run-config experiment=X` were silently missing)."""

import importlib

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsim.config import load
from fedsim.experiment import experiment_for
from fedsim.runtime import ENV_CONFIG

DP_EXPERIMENT = """name = "dp"
seed = 0
device = "cpu"
[data]
name = "digits"
[model]
name = "lenet"
[federation]
num_clients = 2
num_rounds = 1
algorithm = "fedavg"
local_steps = 1
batch_size = 8
lr = 0.1
[[defenses]]
name = "flower_local_dp"
params = {clipping_norm = 0.001, sensitivity = 1.0, epsilon = 10.0, delta = 1e-5}
"""


def _round_one(app, experiment, state):
    """One train message of round 1 through `app`, as the runtime delivers it."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    msg = Message(RecordDict({"arrays": ArrayRecord(state),
                              "config": ConfigRecord({"server-round": 1})}),
                  dst_node_id=1, message_type="train")
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                  state=RecordDict(), run_config={"experiment": str(experiment)})
    reply = app(msg, ctx)
    assert not reply.has_error()
    return reply.content["arrays"].to_torch_state_dict()


def test_flwr_run_app_applies_the_mods_of_the_experiment_it_is_given(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_CONFIG, raising=False)  # as under `flwr run`: no fedsim env
    import clients.app

    app = importlib.reload(clients.app).app  # built at import, with the default in sight
    dp_file = tmp_path / "dp.toml"
    dp_file.write_text(DP_EXPERIMENT)
    cfg = load(dp_file)
    state = experiment_for(cfg).new_model().state_dict()

    plain = _round_one(clients.app.make_client_app(None), dp_file, state)  # no mods at all
    noised = _round_one(app, dp_file, state)
    delta = torch.cat([(noised[k] - state[k]).flatten() for k in state])
    plain_delta = torch.cat([(plain[k] - state[k]).flatten() for k in state])
    # LocalDpMod: the update clipped to norm 0.001, then Gaussian noise of
    # std = sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon = 0.48 on every weight
    expected = (2 * torch.log(torch.tensor(1.25 / 1e-5))).sqrt() / 10.0
    assert abs(delta.std() / expected - 1) < 0.1, float(delta.std())
    assert plain_delta.std() < 0.1 * expected  # plain training moves the weights far less

    # the same app, another run naming the default experiment: no DP there
    default = load("experiments/quick.toml")
    state0 = experiment_for(default).new_model().state_dict()
    again = _round_one(app, "experiments/quick.toml", state0)
    assert torch.cat([(again[k] - state0[k]).flatten() for k in state0]).std() < 0.1 * expected
