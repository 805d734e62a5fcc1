"""The attacker's other positions, as Flower client mods that wrap any ClientApp:

- `eavesdropper_mod`: on the wire. Installed outermost, it sees each reply as it leaves the
  client, after the client's defenses and every other mod (Flower's DP, SecAgg+), and
  writes it as an `eavesdropper` capture. Under SecAgg+ the replies carry masked shares
  only: it records a header saying so, with nothing to invert.
- `client_observer_mod`: an honest-but-curious participant. It sees only the global models
  it receives, so its capture of round r is the change from the global model of round r to
  that of round r + 1: the aggregate of every client's update (observer `client`). It
  never sees the last round's result.

Both write into the run folder of the experiment the ClientApp runs (`fedsim.runtime`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from flwr.app import Context, Message

from fedsim.capture import AGGREGATE, Capture, save_capture
from fedsim.run_folder import RunFolder
from fedsim.config import ExperimentConfig
from fedsim.data.batches import round_examples
from fedsim.experiment import experiment_for
from fedsim.runtime import config_from_runtime, run_dir_from_runtime
from fedsim.reply_capture import carries_update, eavesdropper, wire_round
from server.capture import ServerCapture, declared_facts
from fedsim.record_keys import NUM_EXAMPLES, PARTITION_ID, SERVER_ROUND

log = logging.getLogger("fedsim")


def _round_of(msg: Message) -> int:
    return int(msg.content["config"][SERVER_ROUND])


def _is_train(msg: Message) -> bool:
    return "config" in msg.content and SERVER_ROUND in msg.content["config"]


def eavesdropper_mod(msg: Message, context: Context, call_next) -> Message:
    """The experiment's eavesdropper: `fedsim.reply_capture.eavesdropper` with the
    experiment's facts, plus a note for the masked SecAgg+ shares it cannot invert."""
    cfg = config_from_runtime(context.run_config)
    writer = ServerCapture(cfg, run_dir_from_runtime(cfg), observer="eavesdropper")
    reply = eavesdropper(writer.run_dir, writer.facts, writer=writer)(msg, context, call_next)
    rnd = wire_round(msg)
    if (not reply.has_error() and rnd is not None and writer.wants(rnd)
            and not carries_update(reply)):
        pid = int(context.node_config[PARTITION_ID])  # SecAgg+: masked shares on the wire
        writer.record(rnd, pid, "masked", {}, {}, note="masked SecAgg+ shares only")
    return reply


def client_observer(partition_id: int):
    """The mod for an honest-but-curious client on `partition_id`."""

    def mod(msg: Message, context: Context, call_next) -> Message:
        if _is_train(msg) and int(context.node_config[PARTITION_ID]) == partition_id:
            cfg = config_from_runtime(context.run_config)
            _record_view(cfg, run_dir_from_runtime(cfg), _round_of(msg),
                         msg.content["arrays"].to_torch_state_dict())
        return call_next(msg, context)

    return mod


def _record_view(cfg: ExperimentConfig, run_dir: Path, rnd: int, weights: dict) -> None:
    """Keep the global model received in round `rnd`; with the previous one, write the
    client observer's capture of round `rnd - 1`."""
    view = RunFolder(run_dir).client_view(rnd)
    view.parent.mkdir(parents=True, exist_ok=True)
    torch.save(weights, view)
    prev_path = RunFolder(run_dir).client_view(rnd - 1)
    rounds = cfg.capture.rounds
    if not prev_path.is_file() or (rounds != "all" and rnd - 1 not in rounds):
        return
    before = torch.load(prev_path, weights_only=True)
    fed = cfg.federation
    per_round = fed.clients_per_round or fed.num_clients
    if fed.algorithm == "fedsgd":  # the server took one step of lr along the mean gradient
        kind = "gradient"
        update = {k: (before[k] - weights[k]) / fed.lr for k in weights
                  if weights[k].is_floating_point()}
    else:
        kind, update = "weights", weights
    exp = experiment_for(cfg)  # the examples behind the aggregate, as FedAvg weighs them
    examples = round(per_round / fed.num_clients * sum(
        round_examples(len(p), algorithm=fed.algorithm, batch_size=fed.batch_size,
                       local_epochs=fed.local_epochs, local_steps=fed.local_steps,
                       sampling=exp.sampling) for p in exp.partitions))
    cap = Capture(round=rnd - 1, partition_id=AGGREGATE, observer="client", kind=kind,
                  weights_before=before, update=update,
                  facts=declared_facts(cfg).with_(
                      partitions=list(range(fed.num_clients)),
                      observed_by=partition_id_note(cfg),
                      client_metrics={NUM_EXAMPLES: examples}))
    save_capture(run_dir, cap)


def partition_id_note(cfg: ExperimentConfig) -> str:
    return f"honest-but-curious client on partition {cfg.attack.observer_client}"


# the client-mod observers of fedsim.observers, outermost first: the eavesdropper sees what
# leaves the client after every other mod
MODS = {
    "eavesdropper": lambda cfg: eavesdropper_mod,
    "client": lambda cfg: client_observer(cfg.attack.observer_client),
}


def observer_mods(cfg: ExperimentConfig) -> list:
    """The mods for the configured observers that attach to the ClientApp."""
    return [make(cfg) for name, make in MODS.items() if name in cfg.attack.observers]
