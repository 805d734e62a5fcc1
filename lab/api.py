"""fedsim's public Python API: what does *my* model, data and Flower app leak?

Observe your own Flower app (two lines in it):
    capture_strategy(strategy, run_dir, facts)   wraps your Message-API strategy
    eavesdropper(run_dir, facts)                 a mod for ClientApp(mods=[...])
    AppFacts(...)                                what the wire does not carry

Or work from a model and a batch directly:
    update = client_update(model, images, labels, lr=0.05, batch_size=8, momentum=0.9)
    result = invert(model, update, facts, batch_size=len(images), lr=0.05,
                    local_batch_size=8, iterations=500)
    scores = score(result.images, images, labels, result.labels)
    save_grid("grid.png", images, result.images, scores["pairing"])

and attack a saved capture: `attack_capture(path, "module:factory", originals=...)`.
Images are pixels in the declared range (facts.pixel_range); a model that takes normalised
inputs gets the declared normalisation in front of it.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacker.problem import Budget, InversionResult
from attacker.user_model import normalising
from fedsim.app_facts import AppFacts
from fedsim.capture import Capture
from fedsim.capture_facts import build
from fedsim.reply_capture import eavesdropper
from lab.grids import save_grid as _save_grid
from lab.evaluator import score_images
from lab.foreign import DEFAULT_ATTACK, ForeignSettings, attack_foreign, invert_capture
from server.capture import capture_strategy
from fedsim.record_keys import NUM_EXAMPLES

__all__ = ["AppFacts", "capture_strategy", "eavesdropper", "client_update", "invert", "score",
           "save_grid", "attack_capture"]


def _pixels_model(model: nn.Module, facts: AppFacts) -> nn.Module:
    clone = copy.deepcopy(model)
    return normalising(clone, facts.mean, facts.std) if facts.mean is not None else clone


def client_update(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                  lr: float, batch_size: Optional[int] = None, epochs: int = 1,
                  momentum: float = 0.0, weight_decay: float = 0.0, kind: str = "weights",
                  facts: Optional[AppFacts] = None) -> dict[str, torch.Tensor]:
    """What a client sends for this batch (pixels; normalised first when `facts` declares
    it): its weights after `epochs` of torch.optim.SGD over sequential batches
    (kind="weights", FedAvg), or the gradient of the whole batch (kind="gradient")."""
    net = _pixels_model(model, facts) if facts is not None else copy.deepcopy(model)
    net.train()
    if kind == "gradient":
        net.zero_grad()
        F.cross_entropy(net(images), labels).backward()
        return {n: p.grad.detach().clone() for n, p in net.named_parameters()}
    if kind != "weights":
        raise ValueError(f"kind {kind!r} must be 'weights' or 'gradient'")
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    size = batch_size or len(images)
    for _ in range(epochs):
        for start in range(0, len(images), size):
            opt.zero_grad()
            F.cross_entropy(net(images[start:start + size]),
                            labels[start:start + size]).backward()
            opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()
            if not k.startswith("_fedsim_")}


def invert(model: nn.Module, update: dict[str, torch.Tensor], facts: AppFacts, *,
           batch_size: int, kind: str = "weights", lr: Optional[float] = None,
           local_batch_size: Optional[int] = None,
           labels: Optional[torch.Tensor] = None, attack: Optional[str] = None,
           iterations: int = 1000, device: str = "auto", seed: int = 0,
           **budget) -> InversionResult:
    """Reconstruct the batch behind `update` (from `client_update`, or a capture's), with
    the model as it was before the round, from `batch_size` examples. `labels` known, or
    None to restore them; `budget` takes `attacker.problem.Budget`'s fields (tv_weight,
    restarts, ...). The local training is the one `facts` declares (momentum, weight decay,
    epochs), with `lr` and `local_batch_size` where the declaration leaves them open."""
    declared = dataclasses.replace(facts, lr=lr if lr is not None else facts.lr,
                                   batch_size=local_batch_size or facts.batch_size)
    cap = Capture(round=0, partition_id=0, observer="api", kind=kind,
                  weights_before={k: v.detach().clone() for k, v in model.state_dict().items()},
                  update=update, facts=build(declared.resolve({}, {NUM_EXAMPLES: batch_size})))
    settings = ForeignSettings(model="api", labels="known" if labels is not None else "restored",
                               device=device, seed=seed,
                               budget=Budget(iterations=iterations, **budget))
    result, _ = invert_capture(cap, _pixels_model(model, facts).train(), settings,
                               attack or DEFAULT_ATTACK[kind], None, labels)
    return result


def score(reconstruction: torch.Tensor, originals: torch.Tensor,
          true_labels: Optional[torch.Tensor] = None, found_labels: Optional[torch.Tensor] = None,
          match_on: str = "psnr", lpips_net: Optional[str] = None) -> dict:
    """Best-match pairing, then PSNR, SSIM, RMSE (and LPIPS where its backbone is cached)
    per pair and on average; label accuracy when both labels are given. LPIPS' network is
    the experiment config's default (`evaluation.lpips_net`) unless given."""
    from fedsim.config import EvaluationConfig

    scores, matched_on, note = score_images(originals, true_labels, reconstruction,
                                            found_labels, match_on,
                                            lpips_net or EvaluationConfig().lpips_net)
    return {**scores, "matched_on": matched_on, "lpips_note": note}


def save_grid(path: Union[str, Path], originals: torch.Tensor, reconstruction: torch.Tensor,
              pairing: Optional[Sequence[int]] = None) -> Path:
    """Originals over their paired reconstructions (nearest-neighbour scaled when small)."""
    recon = reconstruction[list(pairing)] if pairing is not None else reconstruction
    _save_grid(Path(path), recon, originals)
    return Path(path)


def attack_capture(capture: Union[str, Path], model: str, *, originals=None,
                   out_dir: Union[str, Path, None] = None, **settings) -> dict:
    """`fedsim attack CAPTURE --model module:factory` from Python; returns the record."""
    capture = Path(capture)
    out = Path(out_dir) if out_dir is not None else capture.parent.parent.parent
    return attack_foreign(capture, ForeignSettings(model=model, originals=originals,
                                                   **settings), out, progress=False)
