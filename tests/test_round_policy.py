"""The round policy against a grid whose nodes come and go (no federation started)."""

import threading

import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.supercore.task_identity import TaskIdentity

from server.round_policy import connected_node_ids
from server.strategy import FedSgdAwareFedAvg


class LeavingGrid:
    """A grid whose node 2 leaves right after the strategy first counts the nodes: the
    race `fedsim deploy` met when a SuperNode was stopped at the end of a round."""

    def __init__(self):
        self.calls = 0

    def get_node_ids(self):
        self.calls += 1
        return [1, 2] if self.calls == 1 else [1]


@pytest.fixture(autouse=True)
def _a_run():
    """Messages carry the task, run and node of the process that makes them: Flower's runtimes set it (its
    public setter), and so does this test, as a ServerApp's process would have."""
    TaskIdentity.task_id = TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0  # the SuperLink's, as in simulation


def _strategy(**kw):
    return FedSgdAwareFedAvg(algorithm="fedavg", server_lr=1.0, fraction_train=1.0,
                             min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0,
                             node_wait_s=0.5, **kw)


def _configure(strategy, grid):
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("messages", list(
        strategy.configure_train(2, ArrayRecord({}), ConfigRecord({}), grid))), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "configure_train waits for a node that left"
    return out["messages"]


def test_a_node_that_leaves_after_the_count_gets_its_message_instead_of_a_wait():
    messages = _configure(_strategy(), LeavingGrid())
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2]


def test_a_node_missing_at_the_count_is_waited_for_then_counted_missing():
    class OneNode:
        def get_node_ids(self):
            return [7]

    strategy = _strategy()
    messages = _configure(strategy, OneNode())
    assert [m.metadata.dst_node_id for m in messages] == [7]
    assert strategy._missing == ["1 of 2 nodes not connected at the start of round 2 "
                                 "(waited 0.5 s)"]


def test_the_wait_ends_when_the_nodes_are_there():
    class Arriving:
        calls = 0

        def get_node_ids(self):
            self.calls += 1
            return [1, 2, 3][: min(self.calls, 3)]

    assert connected_node_ids(Arriving(), 3, timeout_s=10) == [1, 2, 3]
