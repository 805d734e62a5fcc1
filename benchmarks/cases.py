"""The attack-engine benchmark case (issue 11): natural32, seed 0, fedsim's round-0 model,
the first training example of each class (cycling through the classes for batches larger
than the class count), the FedSGD gradient in train mode as a client computes it, known
labels."""

from __future__ import annotations

import tempfile
import time

import torch

from attacker.attacks.base import informative
from attacker.problem import InversionProblem
from clients.training import batch_gradient
from fedsim.config import from_dict
from fedsim.experiment import experiment_for

MODELS = {"lenet": {"name": "lenet"},
          "convnet_gn": {"name": "convnet", "norm": "group"},
          "resnet18": {"name": "resnet18", "norm": "batch", "width": 64}}


def natural32_case(model: str, batch: int, device="cpu", data: str = "natural32"):
    """(problem, true images, true labels, (mean, std)) on `device`."""
    cfg = from_dict({"seed": 0, "device": "cpu", "output_dir": tempfile.mkdtemp(),
                     "data": {"name": data}, "model": MODELS[model],
                     "federation": {"num_clients": 2, "algorithm": "fedsgd",
                                    "batch_size": batch}})
    exp = experiment_for(cfg)
    ds = exp.dataset
    idx = [int((ds.y_train == i % ds.num_classes).nonzero()[i // ds.num_classes])
           for i in range(batch)]
    x, y = ds.x_train[idx].to(device), ds.y_train[idx].to(device)
    net = exp.new_model().to(device)
    grads, _, _ = batch_gradient(net, x, y)
    prob = InversionProblem(net, informative(grads), batch, ds.image_shape, ds.num_classes,
                            labels=y, input_mean=ds.mean, input_std=ds.std)
    return prob, x, y, (ds.mean, ds.std)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_engine(build, steps: int, device, warmup: int = 3) -> tuple[float, float, object]:
    """(set-up seconds, seconds per step, what build returned): build() -> (iteration,
    ...), `warmup` untimed steps counted in the set-up, then `steps` timed ones."""
    t = time.perf_counter()
    built = build()
    for _ in range(warmup):
        built[0]()
    sync(device)
    setup = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        built[0]()
    sync(device)
    return setup, (time.perf_counter() - t) / steps, built
