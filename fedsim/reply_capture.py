"""One capture per training reply, for any observer that sees replies as they cross the
wire (the server, a strategy wrapper around your own strategy, an eavesdropper mod).

It keeps the weights sent that round, the update returned, the train config sent and the
reply's metrics, with the public facts (`fedsim.app_facts.AppFacts` for your own app, or
the `CaptureFacts` fedsim's experiment config declares), built into one typed record. Each capture names the client by its node
id and, when the client reports one, its partition, side by side; a client that reports no
partition id is keyed by its node id. Your own app's captures go to one folder per Flower
run (`per_run`), so two `flwr run`s into the same folder never mix.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from flwr.app import ArrayRecord, Message

from fedsim.app_facts import DEFAULT_KEYS, AppFacts, _plain
from fedsim.capture import OBSERVER, Capture, CaptureError, save_capture
from fedsim.capture_facts import CaptureFacts, build
from fedsim.record_keys import BATCH_SIZES, DISTINCT_EXAMPLES, PARTITION_ID, SERVER_ROUND

log = logging.getLogger("fedsim")

REPLAY_FACTS = ("lr", "batch_size")  # what the FedAvg replay needs and the wire may not carry


def run_folder(root: Path, run_id: int) -> Path:
    """Where a per-run writer puts the captures of Flower run `run_id` (a run folder of its
    own: `fedsim attack` writes its attacks/ and leakage.jsonl beside them)."""
    return Path(root) / f"run_{int(run_id)}"


class ReplyCapture:
    """Callable `(round, weights sent, reply, train config sent)`: writes one capture.
    `per_run`: under RUN_DIR/run_<Flower run id>/ instead of RUN_DIR itself."""

    def __init__(self, run_dir: Path, facts: Union[AppFacts, CaptureFacts],
                 observer: str = "server", rounds="all",
                 per_run: bool = False):
        if not (isinstance(observer, str) and OBSERVER.fullmatch(observer)):
            raise CaptureError(f"observer {observer!r} is not allowed (a name matching "
                               f"{OBSERVER.pattern}: it becomes part of a file name)")
        self.run_dir, self.observer, self.rounds = Path(run_dir), observer, rounds
        self.facts = facts
        self.partition_key = facts.partition_key if isinstance(facts, AppFacts) else PARTITION_ID
        self.per_run = per_run
        self.saved: list[Path] = []
        self._told: set[str] = set()

    def wants(self, server_round: int) -> bool:
        return self.rounds == "all" or server_round in self.rounds

    def folder(self, run_id: Optional[int]) -> Path:
        return run_folder(self.run_dir, run_id) if self.per_run and run_id is not None \
            else self.run_dir

    def _once(self, key: str, message: str, *args) -> None:
        if key not in self._told:
            self._told.add(key)
            log.warning(message, *args)

    def record(self, server_round: int, partition_id: int, kind: str, weights_before: dict,
               update: dict, run_id: Optional[int] = None, **meta) -> None:
        """Write one capture (if this round is captured), with the declared facts."""
        if not self.wants(server_round):
            return
        base = self.facts.to_meta() if isinstance(self.facts, CaptureFacts) \
            else self.facts.resolve({}, {})  # the declared fallbacks
        facts = build({**base, **meta, **({"run_id": run_id} if run_id is not None else {})},
                      f"{self.observer} capture of round {server_round}")
        cap = Capture(round=server_round, partition_id=partition_id, observer=self.observer,
                      kind=kind, weights_before=weights_before, update=update, facts=facts)
        folder = self.folder(run_id)
        if self.per_run and str(folder) not in self._told:
            self._told.add(str(folder))
            log.info("fedsim: %s captures of Flower run %s in %s", self.observer, run_id,
                     folder / "captures")
        self.saved.append(save_capture(folder, cap))

    def _check_declared(self, declared: dict, kind: str, own: dict) -> None:
        """One warning per missing fact the replay of these captures will need."""
        if kind != "weights" or BATCH_SIZES in own:
            return
        keys = {**DEFAULT_KEYS, **self.facts.config_keys}
        for name in REPLAY_FACTS:
            if declared.get(name) is None:
                self._once(name, "fedsim capture: the train config sent has no %r and "
                           "AppFacts.%s is not declared: fedsim attack cannot replay the "
                           "local training of these captures; send %r in the train config "
                           "or declare AppFacts(%s=...)", keys[name], name, keys[name], name)

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
        partition = int(partition) if partition is not None else None
        kind = str(facts.get("kind", "weights"))
        declared = {}
        if isinstance(self.facts, AppFacts):
            declared = self.facts.resolve(sent_config or {}, metrics)
            self._check_declared(declared, kind, facts)
        meta = {**declared, "node_id": node_id, "partition": partition,
                "keyed_by": "partition" if partition is not None else "node",
                "client_metrics": {k: float(v) for k, v in metrics.items()
                                   if isinstance(v, (int, float))}}
        if BATCH_SIZES in facts:
            meta["batch_sizes"] = [int(b) for b in facts[BATCH_SIZES]]
        if DISTINCT_EXAMPLES in facts:
            meta["distinct_examples"] = int(facts[DISTINCT_EXAMPLES])
        meta["effects"] = {**declared.get("effects", {}),
                           **{k.removeprefix("effect-").replace("-", "_"): _plain(v)
                              for k, v in facts.items() if k.startswith("effect-")}}
        self.record(server_round, partition if partition is not None else node_id, kind,
                    weights_before.to_torch_state_dict(), _arrays(content).to_torch_state_dict(),
                    run_id=int(reply.metadata.run_id), **meta)

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
    if config is not None and SERVER_ROUND in config:
        return int(config[SERVER_ROUND])
    if msg.metadata.message_type == "train" and str(msg.metadata.group_id).isdigit():
        return int(msg.metadata.group_id)
    return None


def eavesdropper(run_dir: Path, facts: Union[AppFacts, CaptureFacts], rounds="all",
                 writer: Optional[ReplyCapture] = None):
    """A client mod for any `ClientApp(mods=[...])`: it passes every message through
    unchanged and writes each training reply, as it leaves the client, as an
    `eavesdropper` capture (under RUN_DIR/run_<Flower run id>/). Install it first in `mods`
    so it sees the reply after every other mod (Flower's DP, say). The client is keyed by
    its reply's partition metric, else its node config's `partition-id`, else its node id.
    A capture that fails is logged; the reply leaves unchanged all the same."""
    writer = writer or ReplyCapture(run_dir, facts, observer="eavesdropper", rounds=rounds,
                                    per_run=True)

    def mod(msg: Message, context, call_next) -> Message:
        reply = call_next(msg, context)
        rnd = wire_round(msg)
        if reply.has_error() or rnd is None or not writer.wants(rnd):
            return reply
        if not carries_update(reply):
            return reply  # legacy/SecAgg+ stage messages: the caller decides what they mean
        pid = context.node_config.get(PARTITION_ID)
        try:
            writer(rnd, _arrays(msg.content), reply, config_of(msg),
                   fallback_partition=int(pid) if pid is not None else None)
        except Exception as err:  # noqa: BLE001 - observing never stops training
            log.error("eavesdropper: the capture of round %d failed: %r", rnd, err)
        return reply

    return mod
