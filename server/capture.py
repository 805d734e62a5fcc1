"""The honest-but-curious server's capture of a fedsim experiment: each reply of the
configured rounds, to disk, with the facts the experiment declares."""

from __future__ import annotations

from pathlib import Path

from fedsim.capture_facts import CaptureFacts
from fedsim.config import ExperimentConfig
from fedsim.reply_capture import ReplyCapture


def declared_facts(cfg: ExperimentConfig) -> CaptureFacts:
    """The public facts of a round that the server itself configured."""
    from fedsim.experiment import experiment_for

    fed = cfg.federation
    ds = experiment_for(cfg).dataset
    return CaptureFacts(
        image_shape=ds.image_shape, num_classes=ds.num_classes, mean=ds.mean, std=ds.std,
        algorithm=fed.algorithm, lr=fed.lr, batch_size=fed.batch_size,
        local_epochs=fed.local_epochs, local_steps=fed.local_steps,
        model=cfg.model.name, model_norm=cfg.model.norm, model_width=cfg.model.width,
        dataset=cfg.data.name)


class ServerCapture(ReplyCapture):
    """The experiment's server (or another wire observer, `observer`): its facts and
    captured rounds come from the config."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, observer: str = "server"):
        super().__init__(run_dir, declared_facts(cfg), observer=observer,
                         rounds=cfg.capture.rounds)
        self.cfg = cfg

    def record(self, *args, **meta) -> None:
        """As ReplyCapture's, but a capture lost to a full disk stops fedsim's run
        (`DiskFull`), as every record it cannot write does."""
        from fedsim.records import disk_full

        try:
            super().record(*args, **meta)
        except Exception as err:  # noqa: BLE001 - re-raised, as DiskFull when it is one
            full = disk_full(err, self.run_dir)
            if full is None:
                raise
            raise full from None


def capture_strategy(strategy, run_dir: Path, facts, rounds="all"):
    """Your own Message-API strategy (FedAvg, FedProx, FedAdam, Flower's DP wrappers, ...),
    observed by an honest-but-curious server: it aggregates exactly as before and writes
    every training reply, with the weights and train config sent, under
    RUN_DIR/run_<Flower run id>/captures/ (each run in its own folder). `facts` is your
    app's `fedsim.app_facts.AppFacts`."""
    from server.strategy import ObservedStrategy

    return ObservedStrategy(strategy, on_reply=ReplyCapture(run_dir, facts, rounds=rounds,
                                                            per_run=True))
