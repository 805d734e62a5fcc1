"""The sigmoid LeNet of the DLG line of work (Zhu et al. 2019), sized to the input."""

from __future__ import annotations

import torch
import torch.nn as nn

from fedsim.models.layers import Normalize


class LeNet(nn.Module):
    """Three 5x5 sigmoid convolutions (strides 2, 2, 1) and one linear layer.

    Sigmoid keeps second derivatives non-zero everywhere, which is why gradient inversion
    works so well on it; weights start uniform in [-0.5, 0.5] as in DLG.
    """

    def __init__(self, image_shape, num_classes: int, mean, std):
        super().__init__()
        c, h, w = image_shape
        self.normalize = Normalize(mean, std)
        self.body = nn.Sequential(
            nn.Conv2d(c, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1), nn.Sigmoid(),
        )
        with torch.no_grad():
            feat = self.body(torch.zeros(1, c, h, w)).numel()
        self.fc = nn.Linear(feat, num_classes)
        for p in self.parameters():
            nn.init.uniform_(p, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(self.normalize(x)).flatten(1))
