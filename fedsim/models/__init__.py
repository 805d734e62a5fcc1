"""Model registry: the architectures the attacks are studied on.

Every model takes images in [0, 1] and normalises them itself (a non-persistent buffer), so
updates carry only trainable state and a capture needs no normalisation beside it; the
attack reads the declared mean and std and optimises in those normalised coordinates,
clamped to the pixel box (`attacker.problem`).
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from fedsim.models.convnet import ConvNet
from fedsim.models.lenet import LeNet
from fedsim.models.resnet import resnet18

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet": lambda shape, num_classes, mean, std, norm, width: LeNet(shape, num_classes, mean, std),
    "convnet": lambda shape, num_classes, mean, std, norm, width: ConvNet(shape, num_classes, mean, std, norm, width),
    "resnet18": lambda shape, num_classes, mean, std, norm, width: resnet18(shape, num_classes, mean, std, norm, width),
}


def build_model(name: str, image_shape, num_classes: int, mean, std, norm: str = "batch",
                width: int = 16) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"model.name {name!r} is not one of {sorted(MODELS)}")
    return MODELS[name](tuple(image_shape), num_classes, mean, std, norm, width)


def structure_probe(model_cfg, image_shape) -> nn.Module:
    """The configured architecture with placeholder classes and normalisation constants:
    for questions about its modules (which layers it has), never for training."""
    c = image_shape[0]
    return build_model(model_cfg.name, image_shape, 10, (0.0,) * c, (1.0,) * c,
                       model_cfg.norm, model_cfg.width)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers in forward order: what the BatchNorm prior of an attack hooks into."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


__all__ = ["MODELS", "build_model", "batchnorm_layers", "structure_probe"]
