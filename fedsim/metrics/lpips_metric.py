"""LPIPS v0.1 (the official `lpips` package's network) with verified offline backbones.

`lpips_distance` is where every LPIPS figure comes from. The model is lpips' own module,
built on the meta device (no random initialisation, no download) and then given every
tensor it has: lpips' input scaling, and the backbone and linear layers of the verified
checkpoint (`lpips_weights`; the linear layers equal the `lpips` wheel's bit for bit). A
backbone that is missing or fails its check raises LPIPSUnavailable: LPIPS is then
reported unavailable, never computed from random weights.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from fedsim.metrics.lpips_weights import LPIPSUnavailable, cache_dir, load_backbone

__all__ = ["LPIPSUnavailable", "lpips_distance", "lpips_metric"]

MIN_SIDE = 64  # smaller images are upsampled: AlexNet's 11x11 stride-4 stem needs room
CHUNK = 64     # pairs per forward pass


def _full_state(model: torch.nn.Module, weights: dict) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of lpips' model, from the converted checkpoint."""
    import lpips

    convs = [name for name, m in model.net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if len(convs) != len(weights["convs"]) or len(model.lins) != len(weights["lins"]):
        raise ValueError("the checkpoint's layers do not match lpips' network")
    state = {f"scaling_layer.{k}": v for k, v in lpips.lpips.ScalingLayer().state_dict().items()}
    for name, (w, b) in zip(convs, weights["convs"]):
        state[f"net.{name}.weight"], state[f"net.{name}.bias"] = w, b
    for i, w in enumerate(weights["lins"]):  # lpips registers each as lin{i} and lins.{i}
        state[f"lin{i}.model.1.weight"] = state[f"lins.{i}.model.1.weight"] = w
    return state


@lru_cache(maxsize=4)
def _model(net: str, folder: Path) -> torch.nn.Module:
    import lpips

    weights = load_backbone(net, folder)  # raises LPIPSUnavailable before anything is built
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's notice about lpips' `pretrained=`
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    model.load_state_dict(_full_state(model, weights), strict=True, assign=True)
    if model.version != "0.1" or not model.lpips or model.spatial:
        raise ValueError("fedsim's LPIPS expects lpips' v0.1 linear, non-spatial network")
    return model.eval().requires_grad_(False)


def _prep(x: torch.Tensor) -> torch.Tensor:
    """[0,1] (N,C,H,W) -> [-1,1] (N,3,H',W'), grey repeated, small images upsampled."""
    x = x.detach().float().cpu().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if min(x.shape[-2:]) < MIN_SIDE:
        x = F.interpolate(x, size=(MIN_SIDE, MIN_SIDE), mode="bilinear", align_corners=False)
    return x * 2 - 1


@torch.no_grad()
def lpips_distance(x: torch.Tensor, y: torch.Tensor, net: str = "vgg") -> torch.Tensor:
    """LPIPS between x[i] and y[i] for image batches (N, C, H, W) in [0, 1] (C 1 or 3):
    a tensor of N distances. Raises LPIPSUnavailable without a verified backbone."""
    if x.dim() != 4 or x.shape != y.shape or x.shape[1] not in (1, 3):
        raise ValueError(f"lpips_distance needs two (N, C, H, W) batches of one shape with C 1 "
                         f"or 3, got {tuple(x.shape)} and {tuple(y.shape)}")
    model = _model(net, cache_dir())
    a, b = _prep(x), _prep(y)
    return torch.cat([_distance(model, _features(model, a[i:i + CHUNK]),
                                _features(model, b[i:i + CHUNK]))
                      for i in range(0, len(a), CHUNK)])


FEATURE_CACHE = 128  # images whose backbone features a metric keeps (VGG, 64x64: ~2 MB each)


def _features(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """lpips' unit-normalised backbone features of prepared images, layer by layer: the
    first half of `lpips.LPIPS.forward`, done once per image instead of once per pair."""
    import lpips

    outs = model.net.forward(model.scaling_layer(x))
    return [lpips.normalize_tensor(outs[k]) for k in range(model.L)]


def _distance(model: torch.nn.Module, f0: list[torch.Tensor], f1: list[torch.Tensor]
              ) -> torch.Tensor:
    """The second half of `lpips.LPIPS.forward` (v0.1, linear layers, spatial average)."""
    import lpips

    return sum(lpips.spatial_average(model.lins[k]((a - b) ** 2), keepdim=True)
               for k, (a, b) in enumerate(zip(f0, f1))).flatten()


def lpips_metric(net: str = "vgg"):
    """A `fn(original, reconstruction) -> float` on single images (C, H, W), the same
    computation as lpips_distance (tests/test_lpips.py); raises LPIPSUnavailable at once when the
    backbone is not usable. Pairing and baselines score each image against several
    others, so the backbone features of the last FEATURE_CACHE images are kept, keyed by
    their pixels: a batch of B originals costs B backbone passes, not one per pair."""
    import hashlib
    from collections import OrderedDict

    model = _model(net, cache_dir())
    cache: OrderedDict = OrderedDict()

    def features(image: torch.Tensor) -> list[torch.Tensor]:
        pixels = image.detach().float().cpu().contiguous()
        key = (tuple(pixels.shape), hashlib.blake2b(pixels.numpy().tobytes(),
                                                   digest_size=16).digest())
        if key in cache:
            cache.move_to_end(key)
        else:
            cache[key] = _features(model, _prep(pixels[None]))
            if len(cache) > FEATURE_CACHE:
                cache.popitem(last=False)
        return cache[key]

    @torch.no_grad()
    def fn(original: torch.Tensor, reconstruction: torch.Tensor) -> float:
        if original.dim() != 3 or original.shape != reconstruction.shape:
            raise ValueError(f"lpips_metric scores two (C, H, W) images of one shape, got "
                             f"{tuple(original.shape)} and {tuple(reconstruction.shape)}")
        return float(_distance(model, features(original), features(reconstruction))[0])

    return fn
