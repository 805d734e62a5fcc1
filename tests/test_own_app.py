"""Attacking your own Flower app (examples/own_flower_app: its own LeNet-5, data,
normalisation, SGD with momentum on shuffled batches), as a user would:

- the wrapped strategy aggregates exactly as the unwrapped one (FedAvg and FedAdam);
- `flwr run` of the example leaves captures (server: keyed by node id; eavesdropper mod:
  by partition) that hold the same updates, and `fedsim attack --model` inverts one above
  a threshold set from measurement, with the momentum replay exact at the true images;
- a foreign capture without a model, a model that does not fit, and no originals each get
  one line.
"""

import os
import subprocess
import tempfile

import pytest
import torch

from fedsim.capture import load_capture
from fedsim.metrics import score_reconstruction
from lab.cli import main as fedsim
from tests.own_app import EXAMPLE, example_on_path
from tests.test_flwr_run import _stop_flower

# The example's images have broad flat regions, so a constant image of the batch's mean
# colour already scores ~13 dB; the attack must beat that. Measured at this setting (4
# examples in 2 momentum steps of 2, 300 iterations, CPU): 15.2 and 15.4 dB against 13.3 and
# 13.2 dB for the mean colour (seeds 0, 1).
MARGIN_DB = 1.0


def test_wrapped_strategies_aggregate_exactly_as_unwrapped(tmp_path, monkeypatch):
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAdam, FedAvg
    from flwr.simulation import run_simulation

    example_on_path()
    monkeypatch.setenv("PYTHONPATH", f"{EXAMPLE}:{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("SHAPES_CAPTURE_DIR", str(tmp_path / "mod"))
    from lab.api import capture_strategy
    from shapes_app.client_app import app as client_app
    from shapes_app.facts import FACTS
    from shapes_app.task import Net

    torch.manual_seed(0)
    initial = ArrayRecord(Net().state_dict())
    finals, out = {}, tmp_path / "finals.pt"
    server = ServerApp()

    @server.main()
    def _(grid, context):
        for name, make in (("fedavg", lambda: FedAvg(fraction_evaluate=0.0)),
                           ("fedadam", lambda: FedAdam(fraction_evaluate=0.0, eta=0.01))):
            for wrapped in (False, True):
                strategy = make()
                if wrapped:
                    strategy = capture_strategy(strategy, tmp_path / name, FACTS)
                result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=2,
                                        train_config=ConfigRecord({"lr": 0.05,
                                                                   "batch-size": 8}))
                finals[(name, wrapped)] = result.arrays.to_torch_state_dict()
        torch.save(finals, out)

    run_simulation(server_app=server, client_app=client_app, num_supernodes=2,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    finals = torch.load(out)
    for name in ("fedavg", "fedadam"):
        plain, wrapped = finals[(name, False)], finals[(name, True)]
        assert all(torch.equal(plain[k], wrapped[k]) for k in plain), name
        assert not torch.equal(plain["fc3.bias"], initial.to_torch_state_dict()["fc3.bias"])
        captures = sorted((tmp_path / name / "captures").glob("round_*/server_client_*.pt"))
        assert len(captures) == 4  # 2 rounds x 2 clients, keyed by node id (no partition id)
        assert load_capture(captures[0]).meta["keyed_by"] == "node"


@pytest.fixture(scope="module")
def example_run():
    """`flwr run . local` of the example, as its README says; the captures' folder."""
    home = tempfile.mkdtemp(prefix="flwrhome", dir="/tmp")
    captures = tempfile.mkdtemp(prefix="shapes", dir="/tmp")
    env = {**os.environ, "FLWR_HOME": home, "SHAPES_CAPTURE_DIR": captures}
    try:
        done = subprocess.run(["flwr", "run", ".", "local", "--stream", "--federation-config",
                               "num-supernodes=2", "--run-config",
                               "partition-size=4 batch-size=2"], cwd=EXAMPLE, env=env, capture_output=True,
                              text=True, timeout=300)
    finally:
        _stop_flower(home)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return captures


def test_the_example_app_leaks_and_fedsim_attack_measures_it(example_run, tmp_path,
                                                             monkeypatch, capsys):
    from pathlib import Path

    example_on_path()
    from shapes_app.task import first_use_order

    folder = Path(example_run) / "captures" / "round_001"
    wire = load_capture(folder / "eavesdropper_client_000.pt")
    server = [load_capture(p) for p in folder.glob("server_client_*.pt")]
    seen = next(c for c in server if c.meta["node_id"] == wire.meta["node_id"])
    assert len(server) == 2 and all(torch.equal(seen.update[k], wire.update[k])
                                    for k in wire.update)
    assert wire.meta["lr"] == 0.05 and wire.meta["batch_size"] == 2  # the config sent
    x, y = first_use_order(0, 1, size=4, batch_size=2)
    torch.save({"images": x, "labels": y}, tmp_path / "originals.pt")
    monkeypatch.chdir(EXAMPLE)
    code = fedsim(["attack", str(folder / "eavesdropper_client_000.pt"), "--model",
                   "shapes_app.task:Net", "--originals", str(tmp_path / "originals.pt"),
                   "--iterations", "300", "--out", str(tmp_path), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    psnr = float(out.split("PSNR ")[1].split(" dB")[0])
    mean_colour = x.mean(dim=(0, 2, 3), keepdim=True).expand_as(x).clone()
    baseline = score_reconstruction(x, mean_colour)["psnr"]
    assert psnr > baseline + MARGIN_DB and "label accuracy 1.00" in out

    # the replay models the app's momentum and weight decay: exact at the true images
    from attacker.attacks import ATTACKS
    from attacker.knowledge import Knowledge
    from attacker.objective import make_objective
    from attacker.problem import Budget
    from attacker.target import observe
    from attacker.user_model import user_model

    model = user_model("shapes_app.task:Net", wire.weights_before, wire.meta)
    attack = ATTACKS["fedavg_replay"](Budget(iterations=1))
    prob = attack.problem(observe(wire, "cpu", model),
                          Knowledge(labels_mode="known", batch_size=4, labels=y))
    assert float(make_objective(prob, attack.budget, pixels=True)(x, None)[1]) < 1e-5
    assert (tmp_path / "attacks" / "round_001_eavesdropper_client_000_fedavg_replay.png").is_file()

    # without originals: reconstructions only, and a line saying why
    assert fedsim(["attack", str(folder / "eavesdropper_client_001.pt"), "--model",
                   "shapes_app.task:Net", "--iterations", "5", "--out", str(tmp_path)]) == 0
    assert "no originals given (--originals)" in capsys.readouterr().out


def test_foreign_captures_get_one_line_for_each_mistake(example_run, tmp_path, monkeypatch,
                                                        capsys):
    from pathlib import Path

    cap = str(Path(example_run) / "captures" / "round_001" / "eavesdropper_client_000.pt")
    monkeypatch.chdir(EXAMPLE)
    (tmp_path / "wrong.py").write_text(
        "import torch.nn as nn\n"
        "from shapes_app.task import Net\n"
        "def wide():\n    net = Net()\n    net.conv1 = nn.Conv2d(3, 8, 5)\n    return net\n")
    cases = [
        (["--model", "shapes_app.task:Nope"], "has no callable 'Nope'"),
        (["--model", "no_such_module:Net"], "cannot import 'no_such_module'"),
        (["--model", f"{tmp_path / 'wrong.py'}:wide"],
         "conv1.weight: (8, 3, 5, 5) in the model, (6, 3, 5, 5) in the capture"),
        (["--model", "shapes_app.task:Net", "--originals", str(tmp_path / "none.pt")],
         "--originals"),
        (["--model", "shapes_app.task:Net", "--labels", "known"], "needs labelled originals"),
    ]
    for extra, message in cases:
        assert fedsim(["attack", cap, "--iterations", "2", "--out", str(tmp_path), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
