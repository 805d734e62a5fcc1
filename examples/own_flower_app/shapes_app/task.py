"""The app's own model, data and training: nothing here knows fedsim.

Data: 32x32 RGB images of three shapes (disc, square, triangle) in random colours, sizes
and places over a noisy two-colour gradient, drawn from a seed, so every node makes its own
partition without a download. The pipeline normalises with MEAN/STD; the model sees
normalised inputs. Training: SGD with momentum 0.9 and weight decay 5e-4 over a shuffled
loader, its order drawn from (round, partition).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

CLASSES = ("disc", "square", "triangle")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4


class Net(nn.Module):
    """LeNet-5 with ReLU and max-pooling."""

    def __init__(self, num_classes: int = len(CLASSES)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


def draw_shapes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` images in [0, 1] (N, 3, 32, 32) and their labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    images, labels = [], []
    for _ in range(count):
        label = int(rng.integers(len(CLASSES)))
        # a two-colour gradient in a random direction, with a little noise
        a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        angle = rng.uniform(0, 2 * np.pi)
        t = ((np.cos(angle) * xx + np.sin(angle) * yy) / 32 + 1) / 2
        background = (a[:, None, None] * (1 - t) + b[:, None, None] * t
                      + rng.normal(0, 0.05, (3, 32, 32)))
        colour = rng.uniform(0, 1, 3)
        cy, cx, r = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(5, 10)
        if label == 0:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
        elif label == 1:
            mask = (abs(yy - cy) <= r * 0.8) & (abs(xx - cx) <= r * 0.8)
        else:
            mask = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - (cy - r)) / 2)
        img = np.where(mask[None], colour[:, None, None], background)
        images.append(np.clip(img, 0, 1).astype(np.float32))
        labels.append(label)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


def load_partition(partition_id: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This node's private images (pixels in [0, 1]) and labels."""
    return draw_shapes(size, seed=1000 + partition_id)


def load_test(size: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    return draw_shapes(size, seed=7)


def normalise(x: torch.Tensor) -> torch.Tensor:
    """The app's input pipeline (torchvision's Normalize(MEAN, STD))."""
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def loader(partition_id: int, server_round: int, size: int, batch_size: int,
           dataset=None) -> DataLoader:
    """The node's shuffled training loader; its order comes from (round, partition)."""
    if dataset is None:
        x, y = load_partition(partition_id, size)
        dataset = TensorDataset(normalise(x), y)
    generator = torch.Generator().manual_seed(server_round * 1000 + partition_id)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)


def first_use_order(partition_id: int, server_round: int, size: int, batch_size: int):
    """The private batch in the order the node trained on it (pixels, labels): what the
    owner of the data can score an attack against. The same loader over the indices
    draws the same order."""
    x, y = load_partition(partition_id, size)
    order = torch.cat([idx for (idx,) in loader(partition_id, server_round, size, batch_size,
                                                dataset=TensorDataset(torch.arange(size)))])
    return x[order], y[order]


def train(net: nn.Module, trainloader: DataLoader, epochs: int, lr: float) -> float:
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    total, steps = 0.0, 0
    for _ in range(epochs):
        for x, y in trainloader:
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
    return total / max(steps, 1)


@torch.no_grad()
def test(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    net.eval()
    logits = net(normalise(x))
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
