"""Parameter schemas that both sides of the wire read.

A defense's params are validated by its schema. Most defenses act only on the client
(`clients/defenses/`); Flower's central DP and SecAgg+ have a half on each side (client
mods, and a server strategy wrapper or workflow in `server/transport.py`), so their schemas
live here, below both, and each half reads the same one.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field


POISSON_SAMPLED = frozenset({"dpsgd"})
"""Defenses whose privacy accounting assumes Poisson-sampled batches: with one of them every
process's batch oracle (`fedsim.experiment.Experiment.sampling`) draws Poisson batches, and
the defense declares the effect `poisson_batches` on its uploads."""


class DefenseParams(BaseModel):
    # as strict as the rest of the config: `p = "0.9"` is an error, not a silent 0.9; no inf/nan
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class CentralDPParams(DefenseParams):
    side: Literal["server", "client"] = "server"
    noise_multiplier: float = Field(default=0.5, ge=0)
    clipping_norm: float = Field(default=1.0, gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1,
                         description="of the client-level epsilon the server reports")


class SecAggPlusParams(DefenseParams):
    num_shares: int = Field(default=3, ge=3, description="Flower requires more than 2")
    reconstruction_threshold: int = Field(default=2, ge=1)
    clipping_range: float = Field(default=8.0, gt=0, description="|value| bound before quantising")
    max_weight: Optional[float] = Field(
        default=None, gt=0,
        description="largest num-examples a client reports; default: derived from the "
                    "config (a loose bound costs quantisation precision)")
