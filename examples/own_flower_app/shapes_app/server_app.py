"""The app's ServerApp: Flower's FedAvg, sending lr and batch size each round. fedsim's one
line wraps the strategy so an honest-but-curious server keeps every update it receives."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from shapes_app.facts import FACTS, capture_dir
from shapes_app.task import Net, load_test, test
from lab.api import capture_strategy  # fedsim

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    torch.set_num_threads(1)
    run = context.run_config
    x_test, y_test = load_test()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        net = Net()
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = test(net, x_test, y_test)
        return MetricRecord({"loss": loss, "accuracy": acc})

    torch.manual_seed(int(run.get("seed", 0)))  # the initial model, reproducibly
    strategy = FedAvg(fraction_evaluate=0.0)
    strategy = capture_strategy(strategy, capture_dir(), FACTS)  # fedsim
    strategy.start(
        grid=grid, initial_arrays=ArrayRecord(Net().state_dict()),
        num_rounds=int(run.get("num-server-rounds", 2)),
        train_config=ConfigRecord({"lr": float(run.get("lr", 0.05)),
                                   "batch-size": int(run.get("batch-size", 8))}),
        evaluate_fn=evaluate)
