"""Turn a capture into what an inversion needs: the model at the round's start and the
observed update, using only public facts (architecture, declared hyper-parameters)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from fedsim.capture import Capture, CaptureError
from fedsim.capture_facts import CaptureFacts
from fedsim.models import MODELS, build_model
from fedsim.record_keys import NUM_EXAMPLES


@dataclass
class Observation:
    model: nn.Module                  # weights before the round, train mode
    update: dict[str, torch.Tensor]   # gradient (FedSGD) or new - old weights (FedAvg), params only
    kind: str
    facts: CaptureFacts
    image_shape: tuple[int, int, int]
    num_classes: int


def model_from_capture(cap: Capture) -> nn.Module:
    """One of fedsim's registered models, by the capture's name for it (a name, never code)."""
    f = cap.facts
    if f.model not in MODELS:
        raise CaptureError(f"the capture's model {str(f.model)[:200]!r} is not one of "
                           f"fedsim's models {sorted(MODELS)} (a capture of your own app is "
                           "attacked with --model module:factory)")
    model = build_model(f.model, f.image_shape, f.num_classes, f.mean, f.std,
                        f.model_norm or "batch", f.model_width or 16)
    model.load_state_dict(cap.weights_before)
    return model


def observe(cap: Capture, device: torch.device | str = "cpu",
            model: nn.Module | None = None) -> Observation:
    """What the attacker works from; `model` is your own (`attacker.user_model`), already
    holding the weights before the round, or None for fedsim's models."""
    if model is None and cap.facts.app == "foreign":
        raise ValueError(f"this capture is of a foreign app (model {cap.facts.model!r}): "
                         "give the model, e.g. fedsim attack CAPTURE --model module:factory")
    model = (model if model is not None else model_from_capture(cap)).to(device).train()
    names = [n for n, _ in model.named_parameters()]
    if cap.kind == "gradient":
        update = {n: cap.update[n].to(device) for n in names}
    else:
        update = {n: (cap.update[n] - cap.weights_before[n]).to(device) for n in names}
    return Observation(model, update, cap.kind, cap.facts, tuple(cap.facts.image_shape),
                       cap.facts.num_classes)


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


def declared_data_size(facts: CaptureFacts, kind: str) -> int:
    """How many private examples produced the update, from the reply's public metadata:
    the batch (FedSGD), or the distinct examples of the local steps (FedAvg). Under
    declared Poisson batches (DP-SGD) an example may recur across steps, and which ones do
    is not public: every example of every step counts, each its own dummy in the replay."""
    if facts.effects.get("poisson_batches") and facts.batch_sizes is not None:
        return int(sum(facts.batch_sizes))
    if facts.distinct_examples:
        return facts.distinct_examples
    seen = int(facts.client_metrics[NUM_EXAMPLES])
    if kind == "gradient" or facts.local_steps:
        return seen
    return max(seen // (facts.local_epochs or 1), 1)
