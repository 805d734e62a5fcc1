"""The honest-but-curious server's capture of a fedsim experiment: each reply of the
configured rounds, to disk, with the facts the experiment declares."""

from __future__ import annotations

from pathlib import Path

from fedsim.config import ExperimentConfig
from fedsim.reply_capture import ReplyCapture


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


class ServerCapture(ReplyCapture):
    """The experiment's server (or another wire observer, `observer`): its facts and
    captured rounds come from the config."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, observer: str = "server"):
        super().__init__(run_dir, declared_facts(cfg), observer=observer,
                         rounds=cfg.capture.rounds)
        self.cfg = cfg


def capture_strategy(strategy, run_dir: Path, facts, rounds="all"):
    """Your own Message-API strategy (FedAvg, FedProx, FedAdam, Flower's DP wrappers, ...),
    observed by an honest-but-curious server: it aggregates exactly as before and writes
    every training reply, with the weights and train config sent, under
    RUN_DIR/captures/. `facts` is your app's `fedsim.app_facts.AppFacts`."""
    from server.strategy import ObservedStrategy

    return ObservedStrategy(strategy, on_reply=ReplyCapture(run_dir, facts, rounds=rounds))
