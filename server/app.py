"""The Flower ServerApp: FedAvg with capture, central evaluation every round, a metrics log."""

from __future__ import annotations

import logging
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from clients.defenses import build_defenses
from clients.training import evaluate
from fedsim.experiment import experiment_for
from fedsim.records import append_row
from fedsim.runtime import config_from_runtime, run_dir_from_runtime
from server.capture import ServerCapture
from server.strategy import CapturingFedAvg

log = logging.getLogger("fedsim")

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_runtime(context.run_config)
    run_dir = run_dir_from_runtime(cfg)
    torch.set_num_threads(cfg.threads)
    exp = experiment_for(cfg)
    fed = cfg.federation
    per_round = fed.clients_per_round or fed.num_clients
    model = exp.new_model()
    metrics_path = run_dir / "metrics.jsonl"
    train_metrics: dict[int, dict] = {}
    t0 = time.time()

    def record_train(server_round: int, metrics: MetricRecord, replies: int) -> None:
        train_metrics[server_round] = {
            "train_loss": float(metrics.get("train-loss", float("nan"))),
            "train_accuracy": float(metrics.get("train-accuracy", float("nan"))),
            "clients": replies,
        }

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        if server_round % cfg.evaluation.every and server_round != fed.num_rounds:
            return MetricRecord({})
        loss, acc = evaluate(model, exp.dataset.x_test, exp.dataset.y_test)
        row = {"round": server_round, "global_loss": loss, "global_accuracy": acc,
               "elapsed_s": round(time.time() - t0, 3), **train_metrics.get(server_round, {})}
        append_row(metrics_path, row)
        log.info("round %d/%d  global accuracy %.4f  loss %.4f", server_round, fed.num_rounds,
                 acc, loss)
        return MetricRecord({"accuracy": acc, "loss": loss})

    strategy = CapturingFedAvg(
        algorithm=fed.algorithm,
        server_lr=fed.lr,
        on_reply=ServerCapture(cfg, run_dir),
        on_train_metrics=record_train,
        fraction_train=per_round / fed.num_clients,
        min_train_nodes=per_round,
        min_available_nodes=fed.num_clients,
        fraction_evaluate=0.0,
    )
    for defense in build_defenses(cfg):
        if defense.stage == "transport":
            strategy = defense.wrap_strategy(strategy, per_round)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=fed.num_rounds,
        train_config=ConfigRecord({}),
        evaluate_fn=evaluate_global,
    )
