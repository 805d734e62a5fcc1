"""Central evaluation of the global model each round, written as one metrics row per round.

The row's privacy figures (`dp_epsilon`, `dp_delta`, `dp_accounting`: what they bound) come
from the clients' replies (DP-SGD, Flower's local DP: the largest epsilon of any client so
far, so that every client's own is at most that) or from the server's own accountant
(Flower's central DP, `server.transport`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from fedsim.accuracy import evaluate
from fedsim.experiment import Experiment
from fedsim.records import append_row
from fedsim.record_keys import DP_ACCOUNTING, DP_DELTA, DP_EPSILON, TRAIN_ACCURACY, TRAIN_LOSS
from fedsim.run_folder import RunFolder

log = logging.getLogger("fedsim")


def client_privacy(metrics, facts) -> tuple[float, float, str]:
    """(epsilon, delta, what it bounds) of one client's reply: its `dp-epsilon` and
    `dp-delta` metrics and the `dp-accounting` fact beside them."""
    return (float(metrics[DP_EPSILON]), float(metrics.get(DP_DELTA, float("nan"))),
            str(facts.get(DP_ACCOUNTING, "")))


class RoundRecorder:
    """Keeps the round's aggregated train metrics and writes them with the test accuracy."""

    def __init__(self, exp: Experiment, run_dir: Path):
        from server.transport import central_accountant

        self.exp, self.path = exp, RunFolder(run_dir).metrics
        self.model = exp.new_model()
        self.train: dict[int, dict] = {}
        self.t0 = time.time()
        self.central = central_accountant(exp.cfg)
        self.spent: dict[int, tuple[float, float, str]] = {}  # each client's latest

    def record_train(self, server_round: int, metrics, clients: int,
                     causes: list[str] | None = None,
                     per_client: dict[int, float] | None = None,
                     privacy: dict[int, tuple[float, float, str]] | None = None,
                     weights: list[float] | None = None) -> None:
        causes = causes or []
        row = {"clients": clients, "failures": len(causes)}
        if per_client:
            row["client_train_accuracy"] = {str(k): v for k, v in sorted(per_client.items())}
        if metrics is not None:
            row["train_loss"] = float(metrics.get(TRAIN_LOSS, float("nan")))
            row["train_accuracy"] = float(metrics.get(TRAIN_ACCURACY, float("nan")))
        row.update(self._privacy(privacy or {}, weights))
        if causes:
            row["failure_causes"] = causes
            log.warning("round %d: %d of %d clients failed: %s", server_round, len(causes),
                        clients + len(causes), "; ".join(causes))
        self.train[server_round] = row

    def _privacy(self, privacy: dict, weights: list[float] | None) -> dict:
        if self.central is not None:
            return self.central.release(weights or []) if weights is not None else {}
        self.spent.update(privacy)
        if not self.spent:
            return {}
        eps, delta, accounting = max(self.spent.values())
        return {"dp_epsilon": eps, "dp_delta": delta, "dp_accounting": accounting}

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
