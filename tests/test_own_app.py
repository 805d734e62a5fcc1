"""Attacking your own Flower app (examples/own_flower_app: its own LeNet-5, data,
normalisation, SGD with momentum on shuffled batches), as a user would:

- the wrapped strategy aggregates exactly as the unwrapped one (FedAvg and FedAdam);
- `flwr run` of the example leaves captures (server: keyed by node id; eavesdropper mod:
  by partition) that hold the same updates, and `fedsim attack --model` inverts one above
  a threshold set from measurement, with the momentum replay exact at the true images;
- two `flwr run`s into the same capture folder keep their own captures (run_<id>/);
- a foreign capture without a model, a model that does not fit, and no originals each get
  one line;
- without Flower (tests/own_app.py's tiny app, replies built by hand): a capture beside
  another run's weights, a missing batch size, originals that do not fit, a scalar
  normalisation, and which client a capture is (node id and partition) with its leakage row.
"""

import json
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
        captures = sorted((tmp_path / name).glob("run_*/captures/round_*/server_client_*.pt"))
        assert len(captures) == 4  # 2 rounds x 2 clients, keyed by node id (no partition id)
        assert load_capture(captures[0]).facts.keyed_by == "node"


@pytest.fixture(scope="module")
def example_run():
    """`flwr run . local` of the example, as its README says, twice into the same capture
    folder (the second from another initial model): each run's folder of captures."""
    from pathlib import Path

    home = tempfile.mkdtemp(prefix="flwrhome", dir="/tmp")
    captures = Path(tempfile.mkdtemp(prefix="shapes", dir="/tmp"))
    env = {**os.environ, "FLWR_HOME": home, "SHAPES_CAPTURE_DIR": str(captures)}
    runs = []
    try:
        for seed in (0, 1):
            done = subprocess.run(["flwr", "run", ".", "local", "--stream",
                                   "--federation-config", "num-supernodes=2", "--run-config",
                                   f"partition-size=4 batch-size=2 seed={seed}"], cwd=EXAMPLE,
                                  env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            runs += [p for p in sorted(captures.iterdir()) if p not in runs]
    finally:
        _stop_flower(home)
    return runs


def test_two_flwr_runs_into_one_capture_folder_keep_their_own_captures(example_run):
    """Case 13 as a user meets it: the second run neither reuses the first one's global.pt
    nor mixes its node-keyed server captures with the first one's."""
    assert len(example_run) == 2 and all(p.name.startswith("run_") for p in example_run)
    firsts = []
    for folder in example_run:
        round_1 = folder / "captures" / "round_001"
        caps = [load_capture(p) for p in sorted(round_1.glob("*_client_*.pt"))]
        assert len(caps) == 4  # server and eavesdropper, 2 clients, this run's only
        assert {c.facts.run_id for c in caps} == {int(folder.name.removeprefix("run_"))}
        firsts.append(caps[0].weights_before)
    assert not torch.equal(firsts[0]["fc3.bias"], firsts[1]["fc3.bias"])


def test_the_example_app_leaks_and_fedsim_attack_measures_it(example_run, tmp_path,
                                                             monkeypatch, capsys):
    example_on_path()
    from shapes_app.task import first_use_order

    folder = example_run[0] / "captures" / "round_001"
    wire = load_capture(folder / "eavesdropper_client_000.pt")
    server = [load_capture(p) for p in folder.glob("server_client_*.pt")]
    seen = next(c for c in server if c.facts.node_id == wire.facts.node_id)
    assert len(server) == 2 and all(torch.equal(seen.update[k], wire.update[k])
                                    for k in wire.update)
    assert wire.facts.lr == 0.05 and wire.facts.batch_size == 2  # the config sent
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

    model = user_model("shapes_app.task:Net", wire.weights_before, wire.facts)
    attack = ATTACKS["fedavg_replay"](Budget(iterations=1))
    prob = attack.problem(observe(wire, "cpu", model),
                          Knowledge(labels_mode="known", batch_size=4, labels=y))
    assert float(make_objective(prob, attack.budget, pixels=True)(x, None)[1]) < 1e-5
    assert (tmp_path / "attacks" / "round_001_eavesdropper_client_000_fedavg_replay.png").is_file()

    # without originals: reconstructions only, and a line saying why; a server capture
    # (keyed by node id) says which partition it is, from the eavesdropper's capture
    server_path = folder / f"server_client_{seen.partition_id:03d}.pt"
    assert seen.facts.partition is None and seen.partition_id == seen.facts.node_id
    assert fedsim(["attack", str(server_path), "--model", "shapes_app.task:Net",
                   "--iterations", "5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no originals given (--originals)" in out
    assert (f"server capture of node {seen.facts.node_id} = partition 0 (named by "
            "eavesdropper_client_000.json)") in out
    rows = (tmp_path / "leakage.jsonl").read_text().splitlines()
    assert len(rows) == 2  # the scored attack above and this one


def test_foreign_captures_get_one_line_for_each_mistake(example_run, tmp_path, monkeypatch,
                                                        capsys):
    cap = str(example_run[0] / "captures" / "round_001" / "eavesdropper_client_000.pt")
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


# ---- without a Flower run: the tiny app of tests/own_app.py, replies built by hand ------

def _exchange(monkeypatch, run_id: int, weights: dict, node: int = 77, config=None,
              metrics=None):
    """(message sent, reply) of one training round, as Flower hands them to an observer."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", run_id)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)  # the ServerApp's
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    sent = Message(RecordDict({"arrays": ArrayRecord(weights),
                               "config": ConfigRecord({"server-round": 1,
                                                       **(config or {"lr": 0.1})})}),
                   dst_node_id=node, message_type="train")
    trained = {k: v + 0.01 for k, v in weights.items()}
    reply = Message(RecordDict({"arrays": ArrayRecord(trained),
                                "metrics": MetricRecord(metrics or {"num-examples": 4})}),
                    reply_to=sent)
    return sent, reply


def _tiny_facts(**fields):
    from fedsim.app_facts import AppFacts

    return AppFacts(**{"image_shape": (3, 4, 4), "num_classes": 3, **fields})


def test_two_runs_into_one_folder_stay_apart(tmp_path, monkeypatch):
    """Case 13: each Flower run's captures go to RUN_DIR/run_<run id>/, each against its
    own weights; replayed from the wrong weights, they are refused."""
    from flwr.app import ArrayRecord

    from fedsim.reply_capture import ReplyCapture
    from tests.own_app import tiny

    writers = [ReplyCapture(tmp_path, _tiny_facts(batch_size=2), per_run=True),
               ReplyCapture(tmp_path, _tiny_facts(batch_size=2), observer="eavesdropper",
                            per_run=True)]
    for run_id, shift in ((11, 0.0), (22, 0.5)):
        weights = {k: v + shift for k, v in tiny().state_dict().items()}
        sent, reply = _exchange(monkeypatch, run_id, weights)
        for writer in writers:
            writer(1, ArrayRecord(weights), reply, {"lr": 0.1},
                   fallback_partition=0 if writer.observer == "eavesdropper" else None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_11", "run_22"]
    for run_id, shift in ((11, 0.0), (22, 0.5)):
        folder = tmp_path / f"run_{run_id}" / "captures" / "round_001"
        assert sorted(p.name for p in folder.iterdir()) == [
            "eavesdropper_client_000.json", "eavesdropper_client_000.pt", "global.pt",
            "server_client_077.json", "server_client_077.pt"]
        cap = load_capture(folder / "server_client_077.pt")
        assert cap.facts.run_id == run_id
        assert torch.equal(cap.weights_before["fc.bias"], tiny().state_dict()["fc.bias"] + shift)


def test_a_capture_beside_another_runs_weights_is_refused(tmp_path, capsys, caplog):
    """Case 13, when runs are mixed anyway (one flat folder, files copied together): the
    capture records the digest of its weights, the writer warns, the attack refuses."""
    import logging

    from fedsim.capture import Capture, CaptureError, save_capture
    from tests.own_app import TINY, tiny_capture

    first, _, _ = tiny_capture(tmp_path)
    cap = load_capture(first)
    logging.getLogger("fedsim").addHandler(caplog.handler)
    try:
        second = save_capture(tmp_path, Capture(
            round=1, partition_id=1, observer="server", kind="weights",
            weights_before={k: v + 1 for k, v in cap.weights_before.items()},
            update=cap.update, facts=cap.facts))
    finally:
        logging.getLogger("fedsim").removeHandler(caplog.handler)
    assert "holds other weights than the server capture of round 1" in caplog.text
    with pytest.raises(CaptureError, match="was taken against other weights"):
        load_capture(second)
    capsys.readouterr()
    assert fedsim(["attack", str(second), "--model", TINY, "--iterations", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "captures of two runs mixed in one folder?" in err and len(err.splitlines()) == 1
    assert load_capture(first).partition_id == 0  # its own weights: still attackable


def test_a_missing_batch_size_is_said_at_capture_and_at_attack_time(tmp_path, monkeypatch,
                                                                   caplog, capsys):
    """Case 14: the app sends only lr and declares no batch size."""
    import logging

    from flwr.app import ArrayRecord

    from fedsim.reply_capture import ReplyCapture
    from tests.own_app import TINY, tiny

    writer = ReplyCapture(tmp_path, _tiny_facts(), per_run=True)
    logging.getLogger("fedsim").addHandler(caplog.handler)
    try:
        for node in (5, 6):
            _, reply = _exchange(monkeypatch, 3, tiny().state_dict(), node=node)
            writer(1, ArrayRecord(tiny().state_dict()), reply, {"lr": 0.1})
    finally:
        logging.getLogger("fedsim").removeHandler(caplog.handler)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "no 'batch-size'" in warned[0]
    assert "AppFacts(batch_size=...)" in warned[0]
    capsys.readouterr()
    assert fedsim(["attack", str(writer.saved[0]), "--model", TINY, "--iterations", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not say the client's batch_size" in err and len(err.splitlines()) == 1


def test_originals_must_match_the_capture_in_count_and_pixel_range(tmp_path, capsys):
    """Case 15: as many originals as the capture's examples, in the declared pixel range."""
    from tests.own_app import TINY, tiny_capture

    path, x, y = tiny_capture(tmp_path, examples=4)
    for name, images, message in [
        ("three", x[:3], "--originals holds 3 images, but the capture says the client "
                         "trained on 4 examples"),
        ("normalised", (x - 0.5) / 0.25, "pixel values in [-"),
    ]:
        torch.save({"images": images, "labels": y[:len(images)]}, tmp_path / f"{name}.pt")
        assert fedsim(["attack", str(path), "--model", TINY, "--iterations", "2",
                       "--originals", str(tmp_path / f"{name}.pt")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert "outside the declared pixel range [0, 1]" in err
    assert not (tmp_path / "attacks").exists()  # refused before any work


def test_one_normalisation_number_means_every_channel_in_facts_and_cli(tmp_path, capsys):
    """Case 16: AppFacts(mean=0.45) and --mean 0.45 both mean every channel; two numbers
    for three channels are refused by both, in the same words."""
    from fedsim.app_facts import FactsError
    from tests.own_app import TINY, tiny_capture

    facts = _tiny_facts(mean=0.45, std=0.25)
    assert (facts.mean, facts.std) == ((0.45,) * 3, (0.25,) * 3)
    path, _, _ = tiny_capture(tmp_path)
    assert fedsim(["attack", str(path), "--model", TINY, "--iterations", "2",
                   "--mean", "0.45", "--std", "0.25"]) == 0
    record = json.loads(next((tmp_path / "attacks").glob("*.json")).read_text())
    assert record["knowledge"]["batch_size"] == 4
    with pytest.raises(FactsError) as declared:
        _tiny_facts(mean=(0.5, 0.5), std=0.25)
    assert fedsim(["attack", str(path), "--model", TINY, "--mean", "0.5", "0.5",
                   "--std", "0.25"]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert said[-1].removeprefix("--mean") == str(declared.value).removeprefix("AppFacts.mean")
    assert "give one per channel, or one number for every channel" in said[-1]


def test_a_foreign_attack_is_recorded_and_names_its_client(tmp_path, monkeypatch, capsys):
    """Case 17: node id and partition side by side in each capture; a server capture keyed
    by node id finds its partition in the eavesdropper's capture of the same node; the
    attack writes its leakage.jsonl row and says whose originals score it."""
    from flwr.app import ArrayRecord

    from fedsim.reply_capture import ReplyCapture
    from tests.own_app import TINY, tiny

    facts = _tiny_facts(batch_size=2)
    server = ReplyCapture(tmp_path, facts, per_run=True)
    wire = ReplyCapture(tmp_path, facts, observer="eavesdropper", per_run=True)
    _, reply = _exchange(monkeypatch, 9, tiny().state_dict(), node=4242)
    server(1, ArrayRecord(tiny().state_dict()), reply, {"lr": 0.1, "batch-size": 2})
    wire(1, ArrayRecord(tiny().state_dict()), reply, {"lr": 0.1, "batch-size": 2},
         fallback_partition=1)
    seen, sent = load_capture(server.saved[0]), load_capture(wire.saved[0])
    assert (seen.partition_id, seen.facts.node_id, seen.facts.partition) == (4242, 4242, None)
    assert (sent.partition_id, sent.facts.node_id, sent.facts.partition) == (1, 4242, 1)

    assert fedsim(["attack", str(server.saved[0]), "--model", TINY, "--iterations", "2"]) == 0
    out = capsys.readouterr().out
    assert ("round 1, server capture of node 4242 = partition 1 (named by "
            "eavesdropper_client_001.json)") in out
    rows = [json.loads(line) for line in
            (tmp_path / "run_9" / "leakage.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["partition"] == 1 and rows[0]["node_id"] == 4242
    assert rows[0]["capture"] == "captures/round_001/server_client_4242.pt"
    assert (tmp_path / "run_9" / rows[0]["result"]).is_file()
