"""Privacy accounting shared by the clients (DP-SGD, Flower's local DP) and the server
(Flower's central DP): Opacus' RDP analysis of the Poisson-subsampled Gaussian mechanism.

The epsilon is computed exactly as Opacus' `RDPAccountant.get_epsilon` computes it (its
`compute_rdp` summed over the composed mechanisms, converted by its `get_privacy_spent`
over its default orders), from facts that fit in a client's persistent state (step counts),
so a client rebuilds it every round without keeping an accountant object alive.
"""

from __future__ import annotations

import math
from typing import Iterable

NOT_ACCOUNTED = "not accounted"


def rdp_epsilon(mechanisms: Iterable[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at `delta` of the composition of (noise multiplier, sample rate, steps)
    Gaussian mechanisms; 0 before any step, infinite if any step had no noise."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    mechanisms = [(z, q, n) for z, q, n in mechanisms if n > 0]
    if not mechanisms:
        return 0.0
    if any(z == 0 for z, _, _ in mechanisms):
        return math.inf
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = sum(compute_rdp(q=q, noise_multiplier=z, steps=n, orders=orders)
              for z, q, n in mechanisms)
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)
