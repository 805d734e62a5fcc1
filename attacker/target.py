"""Turn a capture into what an inversion needs: the model at the round's start and the
observed update, using only public facts (architecture, declared hyper-parameters)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from fedsim.capture import Capture
from fedsim.models import build_model


@dataclass
class Observation:
    model: nn.Module                  # weights before the round, train mode
    update: dict[str, torch.Tensor]   # gradient (FedSGD) or new - old weights (FedAvg), params only
    kind: str
    meta: dict
    image_shape: tuple[int, int, int]
    num_classes: int


def model_from_capture(cap: Capture) -> nn.Module:
    m = cap.meta
    model = build_model(m["model"], m["image_shape"], m["num_classes"], m["mean"], m["std"],
                        m.get("model_norm", "batch"), m.get("model_width", 16))
    model.load_state_dict(cap.weights_before)
    return model


def observe(cap: Capture, device: torch.device | str = "cpu",
            model: nn.Module | None = None) -> Observation:
    """What the attacker works from; `model` is your own (`attacker.user_model`), already
    holding the weights before the round, or None for fedsim's models."""
    if model is None and cap.meta.get("app") == "foreign":
        raise ValueError(f"this capture is of a foreign app (model {cap.meta.get('model')!r}): "
                         "give the model, e.g. fedsim attack CAPTURE --model module:factory")
    model = (model if model is not None else model_from_capture(cap)).to(device).train()
    names = [n for n, _ in model.named_parameters()]
    if cap.kind == "gradient":
        update = {n: cap.update[n].to(device) for n in names}
    else:
        update = {n: (cap.update[n] - cap.weights_before[n]).to(device) for n in names}
    return Observation(model, update, cap.kind, cap.meta, tuple(cap.meta["image_shape"]),
                       int(cap.meta["num_classes"]))


def functional_copy(model: nn.Module) -> nn.Module:
    """A copy whose BatchNorm layers always use batch statistics and track nothing, as in
    the client's training forward, and which can run under torch.func.vmap."""
    clone = copy.deepcopy(model)
    for m in clone.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean = None
            m.running_var = None
            m.track_running_stats = False
    return clone.train()


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    name, layer = None, None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name, layer = n, m
    if layer is None:
        raise ValueError("label recovery needs a final linear layer")
    return name, layer


def declared_data_size(meta: dict, kind: str) -> int:
    """How many private examples produced the update, from the reply's public metadata:
    the batch (FedSGD), or the distinct examples of the local steps (FedAvg)."""
    if meta.get("distinct_examples"):
        return int(meta["distinct_examples"])
    seen = int(meta["client_metrics"]["num-examples"])
    if kind == "gradient" or meta.get("local_steps"):
        return seen
    return max(seen // int(meta.get("local_epochs") or 1), 1)
