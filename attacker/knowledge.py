"""What the attacker is granted, as an explicit object (the paper's central variable).

`Knowledge` is the only channel through which anything private may reach an attack, and it
holds something only when the settings grant it: true labels only under labels="known",
the private batch's own BatchNorm statistics only under bn_stats="exact". It is built by
the evaluator side (`lab.oracle`), never by the attacker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Knowledge:
    bn_stats: str = "none"          # "exact" | "inferred" | "none"
    labels_mode: str = "restored"   # "known" | "restored" | "optimised"
    batch_size: int = 1             # known (from the capture) or assumed
    labels: Optional[torch.Tensor] = None                      # only when labels_mode == "known"
    bn_targets: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None  # only when "exact"

    def __post_init__(self):
        if (self.labels is not None) != (self.labels_mode == "known"):
            raise ValueError("true labels may be granted exactly when labels='known'")
        if self.bn_targets is not None and self.bn_stats != "exact":
            raise ValueError("private BatchNorm statistics may be granted only when bn_stats='exact'")
