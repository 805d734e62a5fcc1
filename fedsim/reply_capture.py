"""One capture per training reply, for any observer that sees replies as they cross the
wire (the server, a strategy wrapper around your own strategy, an eavesdropper mod).

It keeps the weights sent that round, the update returned, the train config sent and the
reply's metrics, with the public facts (`fedsim.app_facts.AppFacts` for your own app, or
the facts fedsim's experiment config declares). A client that reports no partition id is
keyed by its node id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Union

from flwr.app import ArrayRecord, Message

from fedsim.app_facts import AppFacts, _plain
from fedsim.capture import Capture, save_capture


class ReplyCapture:
    """Callable `(round, weights sent, reply, train config sent)`: writes one capture."""

    def __init__(self, run_dir: Path, facts: Union[AppFacts, Mapping[str, Any]],
                 observer: str = "server", rounds="all", partition_key: str = "partition-id"):
        self.run_dir, self.observer, self.rounds = Path(run_dir), observer, rounds
        self.facts = facts
        self.partition_key = facts.partition_key if isinstance(facts, AppFacts) else partition_key
        self.saved: list[Path] = []

    def wants(self, server_round: int) -> bool:
        return self.rounds == "all" or server_round in self.rounds

    def record(self, server_round: int, partition_id: int, kind: str, weights_before: dict,
               update: dict, **meta) -> None:
        """Write one capture (if this round is captured), with the declared facts."""
        if not self.wants(server_round):
            return
        facts = dict(self.facts) if not isinstance(self.facts, AppFacts) else {}
        cap = Capture(round=server_round, partition_id=partition_id, observer=self.observer,
                      kind=kind, weights_before=weights_before, update=update,
                      meta={**facts, **meta})
        self.saved.append(save_capture(self.run_dir, cap))

    def __call__(self, server_round: int, weights_before: ArrayRecord, reply: Message,
                 sent_config: Optional[Mapping[str, Any]] = None,
                 fallback_partition: Optional[int] = None) -> None:
        if not self.wants(server_round):
            return
        content = reply.content
        metrics = dict(content["metrics"]) if "metrics" in content else {}
        facts = dict(content["update"]) if "update" in content else {}  # fedsim's own clients
        node_id = int(reply.metadata.src_node_id)
        partition = metrics.get(self.partition_key, fallback_partition)
        declared = (self.facts.resolve(sent_config or {}, metrics)
                    if isinstance(self.facts, AppFacts) else {})
        meta = {**declared, "node_id": node_id,
                "keyed_by": "partition" if partition is not None else "node",
                "client_metrics": {k: float(v) for k, v in metrics.items()
                                   if isinstance(v, (int, float))}}
        if "batch-sizes" in facts:
            meta["batch_sizes"] = [int(b) for b in facts["batch-sizes"]]
        if "distinct-examples" in facts:
            meta["distinct_examples"] = int(facts["distinct-examples"])
        meta["effects"] = {**declared.get("effects", {}),
                           **{k.removeprefix("effect-").replace("-", "_"): _plain(v)
                              for k, v in facts.items() if k.startswith("effect-")}}
        self.record(server_round, int(partition) if partition is not None else node_id,
                    str(facts.get("kind", "weights")), weights_before.to_torch_state_dict(),
                    _arrays(content).to_torch_state_dict(), **meta)

def _arrays(content) -> ArrayRecord:
    """The reply's one ArrayRecord (fedsim and Flower's examples call it "arrays")."""
    if "arrays" in content:
        return content["arrays"]
    records = list(content.array_records.values())
    if len(records) != 1:
        raise ValueError(f"a training reply with {len(records)} ArrayRecords: cannot tell "
                         "which holds the model")
    return records[0]


def carries_update(reply: Message) -> bool:
    """A training reply with an update in it (not a SecAgg+ stage message of masked shares)."""
    return "metrics" in reply.content and bool(reply.content.array_records)


def config_of(message: Message) -> dict:
    """The train config a message carries (Flower's strategies call it "config")."""
    records = message.content.config_records
    record = records.get("config") or next(iter(records.values()), None)
    return dict(record) if record is not None else {}


def wire_round(msg: Message) -> Optional[int]:
    """The round of a training message: its config says it (Message API), or its group id
    (Flower's legacy workflows, SecAgg+ stages included); None for other messages."""
    config = msg.content.config_records.get("config")
    if config is not None and "server-round" in config:
        return int(config["server-round"])
    if msg.metadata.message_type == "train" and str(msg.metadata.group_id).isdigit():
        return int(msg.metadata.group_id)
    return None


def eavesdropper(run_dir: Path, facts: Union[AppFacts, Mapping[str, Any]], rounds="all",
                 writer: Optional[ReplyCapture] = None):
    """A client mod for any `ClientApp(mods=[...])`: it passes every message through
    unchanged and writes each training reply, as it leaves the client, as an
    `eavesdropper` capture. Install it first in `mods` so it sees the reply after every
    other mod (Flower's DP, say). The client is keyed by its reply's partition metric, else
    its node config's `partition-id`, else its node id."""
    writer = writer or ReplyCapture(run_dir, facts, observer="eavesdropper", rounds=rounds)

    def mod(msg: Message, context, call_next) -> Message:
        reply = call_next(msg, context)
        rnd = wire_round(msg)
        if reply.has_error() or rnd is None or not writer.wants(rnd):
            return reply
        if not carries_update(reply):
            return reply  # legacy/SecAgg+ stage messages: the caller decides what they mean
        pid = context.node_config.get("partition-id")
        writer(rnd, _arrays(msg.content), reply, config_of(msg),
               fallback_partition=int(pid) if pid is not None else None)
        return reply

    return mod
