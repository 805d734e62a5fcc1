"""The observers an attacker can be: who sees which updates, and where each attaches.

A registry, as attacks and defenses are: `attack.observers` accepts these names, the
orchestration attacks what each `sees`, and each is attached where its `attaches` says —
`strategy`: the server's own strategy wrapper (server/app.py); `client_mod`: a Flower client
mod (lab/observers.py's `MODS`, one entry per observer); `wire`: the proxy a deployment puts
on its real network path (lab/wire.py, `fedsim deploy` only). Adding an observer is one
entry here and, for a client mod, one module function and one line in `MODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Observer:
    name: str
    attaches: Literal["strategy", "client_mod", "wire"]
    sees: Literal["updates", "aggregate"]   # each client's update, or only the round's aggregate
    description: str
    deploy_only: bool = False


OBSERVERS: dict[str, Observer] = {o.name: o for o in (
    Observer("server", "strategy", "updates",
             "the honest-but-curious server: every update it receives"),
    Observer("eavesdropper", "client_mod", "updates",
             "an eavesdropper on the wire: each update as it leaves its client, after the "
             "client's other mods"),
    Observer("client", "client_mod", "aggregate",
             "an honest-but-curious client: the global models it receives, hence only the "
             "aggregate of each round"),
    Observer("wire", "wire", "updates",
             "the proxy on a deployment's real network path", deploy_only=True),
)}
