"""Attack a capture of your own Flower app: your model factory, your originals if you have
them (scored as usual), none if you do not (the reconstructions are written unscored).

The capture carries the facts your app declared (`fedsim.app_facts.AppFacts`); the model
comes from `module:factory` (`attacker.user_model`). Knowledge works as in fedsim's runs,
with your originals standing in for fedsim's oracle: known labels and exact BatchNorm
statistics need them, in the order your client first used them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from attacker.attacks import ATTACKS
from attacker.knowledge import Knowledge
from attacker.priors import BNRecorder, bn_inputs_stats
from attacker.problem import Budget
from attacker.target import declared_data_size, functional_copy, observe
from attacker.user_model import user_model
from fedsim.capture import Capture, capture_stem, load_capture
from fedsim.config import ConfigError
from fedsim.device import resolve_device
from lab.evaluator import _free_stem, _scored_fields, save_grid, score_images

log = logging.getLogger("fedsim")

DEFAULT_ATTACK = {"weights": "fedavg_replay", "gradient": "inverting_gradients"}


class OriginalsError(ValueError):
    """The originals cannot be read or do not fit the capture's images."""


@dataclass
class ForeignSettings:
    model: str                                     # "module:factory"
    attack: Optional[str] = None                   # default: by the capture's kind
    originals: Optional[Path] = None
    labels: Optional[str] = None                   # default: known with labelled originals
    bn_stats: str = "none"
    batch_size: Union[str, int] = "known"
    mean: Optional[Sequence[float]] = None         # override the declared normalisation
    std: Optional[Sequence[float]] = None
    pixel_range: Optional[Sequence[float]] = None  # override the declared pixel range
    device: str = "auto"
    seed: int = 0
    match_on: str = "psnr"
    lpips_net: str = "alex"
    budget: Budget = field(default_factory=Budget)


def load_originals(path: Path, image_shape: Sequence[int],
                   pixel_range: Sequence[float]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(images in the pixel range, labels or None) from a tensor file (a tensor, or a dict
    with "images" and optional "labels") or a folder of images (sorted by path; an
    ImageFolder tree gives labels by sorted class folder)."""
    path = Path(path)
    lo, hi = (float(v) for v in pixel_range)
    if path.is_dir():
        from fedsim.data.folder import DataFolderError, _class_dirs, _read_tree

        classes = [p.name for p in _class_dirs(path)]
        try:
            if classes:
                x, y = _read_tree(path, classes, tuple(image_shape))
            else:
                x, y = _read_tree(path.parent, [path.name], tuple(image_shape))
                y = None
        except DataFolderError as err:
            raise OriginalsError(f"--originals: {err}") from None
        return lo + (hi - lo) * x, y
    if not path.is_file():
        raise OriginalsError(f"--originals {path}: no such file or folder")
    try:
        data = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - one line naming the file
        raise OriginalsError(f"--originals {path}: not a readable tensor file "
                             f"({type(err).__name__})") from None
    x, y = (data.get("images"), data.get("labels")) if isinstance(data, dict) else (data, None)
    if not torch.is_tensor(x) or x.dim() != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise OriginalsError(f"--originals {path}: expected images of shape (N, "
                             f"{', '.join(map(str, image_shape))}), got {got}")
    return x.float(), (y.long() if torch.is_tensor(y) else None)


def grant(settings: ForeignSettings, cap: Capture, model: torch.nn.Module,
          originals: Optional[torch.Tensor], true_labels: Optional[torch.Tensor]) -> Knowledge:
    """The knowledge settings, with your originals in the oracle's place."""
    size = (declared_data_size(cap.meta, cap.kind) if settings.batch_size == "known"
            else int(settings.batch_size))
    labels_mode = settings.labels or ("known" if true_labels is not None else "restored")
    if labels_mode == "known":
        if true_labels is None:
            raise OriginalsError("--labels known needs labelled originals (--originals with "
                                 "labels); use --labels restored")
        labels = true_labels[:size].to(next(model.parameters()).device)
    else:
        labels = None
    bn = None
    if settings.bn_stats == "exact":
        if originals is None:
            raise OriginalsError("--bn-stats exact needs the originals (--originals)")
        first = int((cap.meta.get("batch_sizes") or [cap.meta.get("batch_size") or size])[0])
        clone = functional_copy(model)
        rec = BNRecorder(clone)
        with torch.no_grad():
            clone(originals[:first].to(next(model.parameters()).device))
        bn = bn_inputs_stats(rec.pop())
        rec.close()
    return Knowledge(bn_stats=settings.bn_stats, labels_mode=labels_mode, batch_size=size,
                     labels=labels, bn_targets=bn)


def _reconstruction_grid(path: Path, images: torch.Tensor) -> None:
    """Reconstructions alone (no originals to show), scaled up like the scored grid."""
    images = images.clamp(0, 1)
    if images.shape[-1] < 32:
        images = F.interpolate(images, scale_factor=32 // images.shape[-1], mode="nearest")
    save_image(make_grid(images, nrow=min(16, len(images)), padding=2, pad_value=1.0), path)


def attack_foreign(capture_path: Path, settings: ForeignSettings, out_dir: Path,
                   progress: bool = True) -> dict:
    """Invert one capture of your app; score it when originals are given. Writes
    OUT/attacks/<stem>.png/.pt/.json and returns the record."""
    cap = load_capture(capture_path)
    meta = cap.meta
    if settings.pixel_range is not None:
        meta.setdefault("effects", {})["pixel_box"] = [float(v) for v in settings.pixel_range]
    if settings.mean is not None:
        meta.update(mean=list(settings.mean), std=list(settings.std), normalised_input=True)
    box = meta.get("effects", {}).get("pixel_box", [0.0, 1.0])
    name = settings.attack or DEFAULT_ATTACK.get(cap.kind, "inverting_gradients")
    if name not in ATTACKS:
        raise ConfigError(f"--attack {name!r} is not one of {sorted(ATTACKS)}")
    originals, true_labels = (load_originals(settings.originals, meta["image_shape"], box)
                              if settings.originals is not None else (None, None))
    model = user_model(settings.model, cap.weights_before, meta)
    result, knowledge = invert_capture(cap, model, settings, name, originals, true_labels,
                                       progress)
    out = Path(out_dir) / "attacks"
    out.mkdir(parents=True, exist_ok=True)
    stem = _free_stem(out, f"round_{cap.round:03d}_{capture_stem(cap.observer, cap.partition_id)}"
                           f"_{name}")
    torch.save({"images": result.images, "labels": result.labels}, out / f"{stem}.pt")
    record = {"round": cap.round, "partition_id": cap.partition_id, "observer": cap.observer,
              "attack": name, "kind": cap.kind, "model": settings.model,
              "knowledge": {"bn_stats": knowledge.bn_stats, "labels": knowledge.labels_mode,
                            "batch_size": knowledge.batch_size},
              "iterations": result.iterations, "match_loss": result.match_loss,
              "seconds": result.seconds, "device": result.device, "engine": result.engine,
              "found_labels": result.labels.tolist(), "capture": str(capture_path),
              "grid": f"attacks/{stem}.png", "reconstruction": f"attacks/{stem}.pt"}
    if originals is None:
        _reconstruction_grid(out / f"{stem}.png", result.images)
        record["unscored"] = ("no originals given (--originals): the reconstructions are "
                              "written without scores")
    else:
        scores, matched_on, note = score_images(originals, true_labels, result.images,
                                                result.labels, settings.match_on,
                                                settings.lpips_net)
        save_grid(out / f"{stem}.png", originals, result.images[scores["pairing"]])
        record.update(_scored_fields(scores, matched_on, note))
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2))
    return record


def invert_capture(cap: Capture, model: torch.nn.Module, settings: ForeignSettings, name: str,
                   originals: Optional[torch.Tensor] = None,
                   true_labels: Optional[torch.Tensor] = None, progress: bool = False):
    """(InversionResult, Knowledge): `model` holds the weights before the round and takes
    pixels (`attacker.user_model.normalising` in front of a normalised-input model)."""
    from lab.orchestration.attacks import _progress_bar

    obs = observe(cap, resolve_device(settings.device),
                  model.to(resolve_device(settings.device)))
    knowledge = grant(settings, cap, obs.model, originals, true_labels)
    _warn_if_approximate(cap.meta)
    update, close = _progress_bar(settings.budget.iterations, f"{name} r{cap.round}", progress)
    try:
        result = ATTACKS[name](settings.budget).run(obs, knowledge, seed=settings.seed,
                                                     progress=update)
    finally:
        close()
    return result, knowledge


def _warn_if_approximate(meta: dict) -> None:
    """Shuffled batches over several epochs regroup the examples every epoch; the replay
    keeps the first epoch's grouping, so it is exact for one epoch only."""
    if meta.get("shuffle") and int(meta.get("local_epochs") or 1) > 1 \
            and not meta.get("batch_order"):
        log.warning("the client shuffles over %s epochs: the replay assumes every epoch "
                    "visits the examples in the first epoch's order (approximate)",
                    meta.get("local_epochs"))
