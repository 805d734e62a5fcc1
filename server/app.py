"""The Flower ServerApp: FedAvg observed by the capture, central evaluation every round, a
metrics log.

With secure aggregation the round runs on Flower's legacy SecAgg+ workflow instead
(`server.secure`), where the server only ever holds the aggregate.
"""

from __future__ import annotations


import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedsim.experiment import experiment_for
from fedsim.runtime import config_from_runtime, run_dir_from_runtime
from server.capture import ServerCapture
from server.evaluation import RoundRecorder
from server.transport import secure_workflow, wrap_strategy
from server.round_policy import RoundFailed, connected_nodes
from server.strategy import FedSgdAwareFedAvg, ObservedStrategy
from fedsim.run_folder import RunFolder

app = ServerApp()


class NodesMissing(RuntimeError):
    """Fewer nodes connected than the experiment has clients."""


def wait_for_nodes(grid: Grid, needed: int, timeout_s: float) -> None:
    """Flower's strategies wait for their nodes forever, printing a line a second; this
    bounds the wait and says what to change, once."""
    connected = connected_nodes(grid, needed, timeout_s)
    if connected < needed:
        raise NodesMissing(
            f"federation.num_clients = {needed} needs {needed} connected nodes, but "
            f"{connected} connected within {timeout_s:g} s (federation.connect_timeout_s). "
            f"With `flwr run . local`, give the federation that many: --federation-config "
            f"\"num-supernodes={needed}\"")


def _log_to_run_folder(run_dir) -> None:
    """fedsim's log lines also in RUN_DIR/run.log (a deployed ServerApp is a process of its
    own; in simulation the driver has attached the same file already)."""
    import logging

    target = str((run_dir / "run.log").resolve())
    logger = logging.getLogger("fedsim")
    if any(getattr(h, "baseFilename", None) == target for h in logger.handlers):
        return
    from fedsim.records import RunLogHandler

    handler = RunLogHandler(target)  # a failed write is said once, not once per line
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(grid: Grid, context: Context) -> None:
    """The server's whole run; `app` serves it, and an orchestrator may wrap it."""
    cfg = config_from_runtime(context.run_config)
    run_dir = run_dir_from_runtime(cfg)
    if not RunFolder(run_dir).config.exists():  # a deployment: the attacker worker reads it
        run_dir.mkdir(parents=True, exist_ok=True)
        RunFolder(run_dir).config.write_text(cfg.to_toml())
    _log_to_run_folder(run_dir)
    if hasattr(grid, "pull_interval"):  # Flower's in-memory grid polls replies every 0.1 s:
        grid.pull_interval = 0.01       # with fast local training that is half a round
    torch.set_num_threads(cfg.threads)
    exp = experiment_for(cfg)
    wait_for_nodes(grid, cfg.federation.num_clients, cfg.federation.connect_timeout_s)
    recorder = RoundRecorder(exp, run_dir)
    capture = ServerCapture(cfg, run_dir)
    workflow = secure_workflow(cfg, exp)
    if workflow is not None:
        from server.secure import run_secure

        return run_secure(grid, context, exp, workflow, capture, recorder)

    fed = cfg.federation
    per_round = fed.clients_per_round or fed.num_clients

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        out = recorder.evaluate(server_round, arrays.to_torch_state_dict())
        return MetricRecord({} if out is None else {"loss": out[0], "accuracy": out[1]})

    strategy = FedSgdAwareFedAvg(
        algorithm=fed.algorithm,
        server_lr=fed.lr,
        on_train_metrics=recorder.record_train,
        fraction_train=per_round / fed.num_clients,
        min_train_nodes=per_round,
        min_results=fed.min_results,
        min_available_nodes=fed.num_clients,
        node_wait_s=fed.connect_timeout_s,
        fraction_evaluate=0.0,
    )
    strategy = wrap_strategy(cfg, strategy, per_round)  # Flower's central DP, if configured
    strategy = ObservedStrategy(strategy, on_reply=capture)  # outermost: sees raw replies
    try:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(exp.new_model().state_dict()),
            num_rounds=fed.num_rounds,
            train_config=ConfigRecord({}),
            evaluate_fn=evaluate_global,
        )
    except RoundFailed as err:
        recorder.fail(str(err))
        raise


app.main()(main)
