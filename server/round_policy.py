"""What a round needs to count, written once for the Message-API path (`server.strategy`)
and the SecAgg+ legacy path (`server.secure`): how long to wait for nodes, how many results
a round needs, and the FedSGD server step.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord


class RoundFailed(RuntimeError):
    """A round ended with fewer successful client results than `min_results`."""


def connected_node_ids(grid, wanted: int, timeout_s: float) -> list[int]:
    """The connected nodes, after waiting at most `timeout_s` for `wanted` of them (Flower's
    sampling would wait forever for a node that is gone)."""
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < wanted and time.monotonic() < deadline:
        time.sleep(0.5)
    return nodes


def connected_nodes(grid, wanted: int, timeout_s: float) -> int:
    return len(connected_node_ids(grid, wanted, timeout_s))


class NodeSnapshot:
    """The grid as it was when its nodes were counted: `get_node_ids` answers that list,
    everything else is the grid's. A strategy samples from it, so a node that leaves
    between the count and the sampling gets its message (and fails as gone) instead of
    Flower's sampling waiting forever for it to come back."""

    def __init__(self, grid, node_ids: list[int]):
        self._grid, self._node_ids = grid, list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name):
        return getattr(self._grid, name)


def require_results(server_round: int, results: int, replies: int, min_results: int,
                    causes: list[str]) -> None:
    """Raise `RoundFailed`, naming the causes, when fewer than `min_results` clients of the
    round returned a result."""
    if results < min_results:
        raise RoundFailed(f"round {server_round}: {results} of {replies} clients returned a "
                          f"result (federation.min_results = {min_results}); "
                          + ("; ".join(causes) if causes else "no client replied"))


def sgd_step_arrays(weights: dict[str, np.ndarray], mean_grad: dict[str, np.ndarray],
                    lr: float) -> dict[str, np.ndarray]:
    """FedSGD's server step, w - lr * g for every entry that has a gradient (in w's dtype);
    buffers pass through."""
    return {k: (w - lr * mean_grad[k]).astype(w.dtype) if k in mean_grad else w
            for k, w in weights.items()}


def sgd_step(weights: ArrayRecord, mean_grad: ArrayRecord, lr: float) -> ArrayRecord:
    """`sgd_step_arrays` on Flower ArrayRecords."""
    new = sgd_step_arrays({k: a.numpy() for k, a in weights.items()},
                          {k: a.numpy() for k, a in mean_grad.items()}, lr)
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in new.items()})
