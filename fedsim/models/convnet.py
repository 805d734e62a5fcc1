"""A small three-block ConvNet with a configurable normalisation layer."""

from __future__ import annotations

import torch.nn as nn

from fedsim.models.layers import Normalize, norm_layer


class ConvNet(nn.Module):
    """Convolutions carry a bias only without a normalisation layer: before BatchNorm a bias
    is cancelled by the mean and its gradient is exactly zero (numerical noise that a
    per-layer cosine in an attack would weigh like a real layer)."""

    def __init__(self, image_shape, num_classes: int, mean, std, norm: str = "batch",
                 width: int = 16):
        super().__init__()
        c = image_shape[0]
        w1, w2, w3 = width, 2 * width, 4 * width
        bias = norm == "none"
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(c, w1, 3, padding=1, bias=bias), norm_layer(norm, w1), nn.ReLU(),
            nn.Conv2d(w1, w2, 3, padding=1, stride=2, bias=bias), norm_layer(norm, w2), nn.ReLU(),
            nn.Conv2d(w2, w3, 3, padding=1, stride=2, bias=bias), norm_layer(norm, w3), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.fc = nn.Linear(w3 * 4, num_classes)

    def forward(self, x):
        return self.fc(self.features(self.normalize(x)))
