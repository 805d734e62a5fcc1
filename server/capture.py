"""The honest-but-curious server's capture: each reply of the configured rounds, to disk."""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, Message

from fedsim.capture import Capture, save_capture
from fedsim.config import ExperimentConfig


def declared_facts(cfg: ExperimentConfig) -> dict:
    """The public facts of a round that the server itself configured."""
    from fedsim.experiment import experiment_for

    fed = cfg.federation
    ds = experiment_for(cfg).dataset
    return {
        "image_shape": list(ds.image_shape), "num_classes": ds.num_classes,
        "mean": list(ds.mean), "std": list(ds.std),
        "algorithm": fed.algorithm, "lr": fed.lr, "batch_size": fed.batch_size,
        "local_epochs": fed.local_epochs, "local_steps": fed.local_steps,
        "model": cfg.model.name, "model_norm": cfg.model.norm, "model_width": cfg.model.width,
        "dataset": cfg.data.name,
    }


def _plain(value):
    """A ConfigRecord value as JSON-friendly Python."""
    return list(value) if isinstance(value, (list, tuple)) else value


class ServerCapture:
    """Callable handed to the strategy: writes one capture per client reply. The same
    writer serves any observer that sees a reply as it crossed the wire (`observer`)."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, observer: str = "server"):
        self.cfg, self.run_dir, self.observer = cfg, Path(run_dir), observer
        self.rounds = cfg.capture.rounds
        self.facts = declared_facts(cfg)
        self.saved: list[Path] = []

    def wants(self, server_round: int) -> bool:
        return self.rounds == "all" or server_round in self.rounds

    def record(self, server_round: int, partition_id: int, kind: str, weights_before: dict,
               update: dict, **meta) -> None:
        """Write one capture (if this round is captured), with the round's declared facts."""
        if not self.wants(server_round):
            return
        cap = Capture(round=server_round, partition_id=partition_id, observer=self.observer,
                      kind=kind, weights_before=weights_before, update=update,
                      meta={**self.facts, **meta})
        self.saved.append(save_capture(self.run_dir, cap))

    def __call__(self, server_round: int, weights_before: ArrayRecord, reply: Message) -> None:
        if not self.wants(server_round):
            return
        content = reply.content
        metrics = dict(content["metrics"])
        facts = dict(content["update"]) if "update" in content else {}
        self.record(
            server_round, int(metrics["partition-id"]), str(facts.get("kind", "weights")),
            weights_before.to_torch_state_dict(), content["arrays"].to_torch_state_dict(),
            node_id=int(reply.metadata.src_node_id),
            client_metrics={k: float(v) for k, v in metrics.items()},
            batch_sizes=[int(b) for b in facts.get("batch-sizes", [])],
            distinct_examples=int(facts.get("distinct-examples", 0)),
            effects={k.removeprefix("effect-").replace("-", "_"): _plain(v)
                     for k, v in facts.items() if k.startswith("effect-")},
        )
