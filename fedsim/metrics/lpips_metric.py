"""LPIPS with the official `lpips` package, backbones loaded offline from the torch cache.

The `lpips` wheel ships only its linear calibration layers; the VGG/AlexNet backbones are
torchvision weights. They are read from $TORCH_HOME/hub/checkpoints/ when present and never
downloaded: when absent LPIPS is reported unavailable, never computed from random weights.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger("fedsim")

BACKBONE_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}


class LPIPSUnavailable(RuntimeError):
    """The backbone weights are not in the local cache; the message names file and folder."""


def checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def backbone_path(net: str) -> Path:
    return checkpoint_dir() / BACKBONE_FILES[net]


@lru_cache(maxsize=4)
def _model(net: str, random_backbone: bool):
    import lpips

    if not random_backbone and not backbone_path(net).is_file():
        raise LPIPSUnavailable(
            f"LPIPS-{net} unavailable: backbone weights {BACKBONE_FILES[net]} not found in "
            f"{checkpoint_dir()} (set TORCH_HOME or copy the torchvision file there)"
        )
    os.environ.setdefault("TORCH_HOME", str(Path(torch.hub.get_dir()).parent))
    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=random_backbone, verbose=False)
    return model.eval()


def _prep(img: torch.Tensor) -> torch.Tensor:
    """[0,1] (C,H,W) -> [-1,1] (1,3,H',H'), grey repeated, small images upsampled to 64."""
    x = img.detach().float().clamp(0, 1)[None]
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if min(x.shape[-2:]) < 64:
        x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    return x * 2 - 1


def lpips_metric(net: str = "vgg", random_backbone: bool = False):
    """A `fn(original, reconstruction) -> float`; raises LPIPSUnavailable without weights.

    random_backbone=True (lpips' pnet_rand) exercises the plumbing only: its numbers mean
    nothing and are never reported.
    """
    model = _model(net, random_backbone)

    @torch.no_grad()
    def fn(original: torch.Tensor, reconstruction: torch.Tensor) -> float:
        return float(model(_prep(original), _prep(reconstruction)).item())

    return fn
