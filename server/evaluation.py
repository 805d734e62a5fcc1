"""Central evaluation of the global model each round, written as one metrics row per round."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from clients.training import evaluate
from fedsim.experiment import Experiment
from fedsim.records import append_row

log = logging.getLogger("fedsim")


class RoundRecorder:
    """Keeps the round's aggregated train metrics and writes them with the test accuracy."""

    def __init__(self, exp: Experiment, run_dir: Path):
        self.exp, self.path = exp, Path(run_dir) / "metrics.jsonl"
        self.model = exp.new_model()
        self.train: dict[int, dict] = {}
        self.t0 = time.time()

    def record_train(self, server_round: int, metrics, clients: int) -> None:
        self.train[server_round] = {
            "train_loss": float(metrics.get("train-loss", float("nan"))),
            "train_accuracy": float(metrics.get("train-accuracy", float("nan"))),
            "clients": clients,
        }

    def evaluate(self, server_round: int, state: dict[str, torch.Tensor]) -> tuple[float, float] | None:
        cfg = self.exp.cfg
        last = cfg.federation.num_rounds
        if server_round % cfg.evaluation.every and server_round != last:
            return None
        self.model.load_state_dict(state)
        loss, acc = evaluate(self.model, self.exp.dataset.x_test, self.exp.dataset.y_test)
        append_row(self.path, {"round": server_round, "global_loss": loss, "global_accuracy": acc,
                               "elapsed_s": round(time.time() - self.t0, 3),
                               **self.train.get(server_round, {})})
        log.info("round %d/%d  global accuracy %.4f  loss %.4f", server_round, last, acc, loss)
        return loss, acc
