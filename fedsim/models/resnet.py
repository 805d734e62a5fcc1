"""CIFAR-style ResNet-18 (3x3 stem, no max-pool) with a configurable normalisation layer."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from fedsim.models.layers import Normalize, norm_layer


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = norm_layer(norm, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), norm_layer(norm, cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, image_shape, num_classes, mean, std, norm, width, blocks=(2, 2, 2, 2)):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(
            nn.Conv2d(image_shape[0], width, 3, padding=1, bias=False), norm_layer(norm, width),
            nn.ReLU(),
        )
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2**i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1, norm))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        out = self.layers(self.stem(self.normalize(x)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


MIN_SIDE = 32


def resnet18(image_shape, num_classes, mean, std, norm="batch", width=64) -> ResNet:
    """width=64 is the standard ResNet-18; smaller widths keep CPU tests fast.

    Inputs must be at least 32x32: smaller ones shrink the last stages to 1x1 maps, where
    oneDNN's CPU convolution backward (torch 2.14.1) was seen to return nondeterministic
    gradients and once to corrupt the heap (8x8 digits, tests/test_models.py).
    """
    if min(image_shape[1:]) < MIN_SIDE:
        raise ValueError(f"model.name 'resnet18' needs images of at least {MIN_SIDE}x{MIN_SIDE}; "
                         f"these are {image_shape[1]}x{image_shape[2]} (use lenet or convnet)")
    return ResNet(image_shape, num_classes, mean, std, norm, width)
