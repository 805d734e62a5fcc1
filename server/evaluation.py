"""Central evaluation of the global model each round, written as one metrics row per round."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from fedsim.accuracy import evaluate
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

    def record_train(self, server_round: int, metrics, clients: int,
                     causes: list[str] | None = None,
                     per_client: dict[int, float] | None = None) -> None:
        causes = causes or []
        row = {"clients": clients, "failures": len(causes)}
        if per_client:
            row["client_train_accuracy"] = {str(k): v for k, v in sorted(per_client.items())}
        if metrics is not None:
            row["train_loss"] = float(metrics.get("train-loss", float("nan")))
            row["train_accuracy"] = float(metrics.get("train-accuracy", float("nan")))
            if "dp-epsilon" in metrics:  # DP-SGD: the clients' epsilon so far (mean)
                row["dp_epsilon"] = float(metrics["dp-epsilon"])
        if causes:
            row["failure_causes"] = causes
            log.warning("round %d: %d of %d clients failed: %s", server_round, len(causes),
                        clients + len(causes), "; ".join(causes))
        self.train[server_round] = row

    def fail(self, message: str) -> None:
        """The round that stopped the run, as a row of its own: what failed and why."""
        last = max(self.train, default=0)
        append_row(self.path, {"round": last, "error": message,
                               "elapsed_s": round(time.time() - self.t0, 3), **self.train.get(last, {})})
        log.error("%s", message)

    def evaluate(self, server_round: int, state: dict[str, torch.Tensor]) -> tuple[float, float] | None:
        """One metrics row per round (the train side and client failures every round, the
        global model's test loss and accuracy every `evaluation.every` rounds and the last)."""
        cfg = self.exp.cfg
        last = cfg.federation.num_rounds
        row = {"round": server_round, **self.train.get(server_round, {})}
        out = None
        if server_round == 0 or not server_round % cfg.evaluation.every or server_round == last:
            self.model.load_state_dict(state)
            out = evaluate(self.model, self.exp.dataset.x_test, self.exp.dataset.y_test)
            row.update(global_loss=out[0], global_accuracy=out[1])
            log.info("round %d/%d  global accuracy %.4f  loss %.4f", server_round, last,
                     out[1], out[0])
        append_row(self.path, {**row, "elapsed_s": round(time.time() - self.t0, 3)})
        return out
