"""Split a train set among clients: IID or Dirichlet label skew, deterministic per seed."""

from __future__ import annotations

import numpy as np


def iid(num_examples: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(num_examples)
    return [np.sort(part) for part in np.array_split(perm, num_clients)]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float,
              rng: np.random.Generator, min_size: int = 1, max_tries: int = 100) -> list[np.ndarray]:
    """Per class, share its examples among clients by Dirichlet(alpha) proportions.

    Redrawn until every client holds at least ``min_size`` examples, so no client is empty.
    """
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(
        f"data.alpha={alpha} leaves some of {num_clients} clients with fewer than "
        f"{min_size} examples; raise data.alpha or lower federation.num_clients"
    )


def partition_indices(labels, num_clients: int, scheme: str, alpha: float, seed: int,
                      min_size: int = 1) -> list[np.ndarray]:
    """The train-set indices of every client, identical for the same seed."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 11])
    if len(labels) < num_clients * min_size:
        raise ValueError(
            f"federation.num_clients={num_clients} needs at least {num_clients * min_size} "
            f"train examples, the data set has {len(labels)}"
        )
    if scheme == "iid":
        return iid(len(labels), num_clients, rng)
    if scheme == "dirichlet":
        return dirichlet(labels, num_clients, alpha, rng, min_size=min_size)
    raise ValueError(f"data.partition {scheme!r} is not one of ['dirichlet', 'iid']")
