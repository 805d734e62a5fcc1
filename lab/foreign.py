"""Attack a capture of your own Flower app: your model factory, your originals if you have
them (scored as usual), none if you do not (the reconstructions are written unscored).

The capture carries the facts your app declared (`fedsim.app_facts.AppFacts`); the model
comes from `module:factory` (`attacker.user_model`). Knowledge works as in fedsim's runs,
with your originals standing in for fedsim's oracle: known labels and exact BatchNorm
statistics need them, in the order your client first used them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from attacker.attacks import ATTACKS
from attacker.knowledge import Knowledge
from attacker.priors import batch_bn_stats
from attacker.problem import Budget
from attacker.target import declared_data_size, observe
from attacker.attacks.fedavg import local_schedule
from attacker.user_model import user_model
from fedsim.app_facts import per_channel
from fedsim.capture import Capture, CaptureError, load_capture, read_header
from fedsim.config import ConfigError, EvaluationConfig
from fedsim.device import resolve_device
from lab.evaluator import attacks_folder, keep_attack
from fedsim.record_keys import NUM_EXAMPLES

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
    lpips_net: str = EvaluationConfig().lpips_net  # one default: the config's
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
    x = x.float()
    low, high = float(x.min()), float(x.max())
    slack = 1e-3 * (hi - lo)
    if low < lo - slack or high > hi + slack:
        raise OriginalsError(f"--originals {path}: pixel values in [{low:.4g}, {high:.4g}], "
                             f"outside the declared pixel range [{lo:g}, {hi:g}] (normalised "
                             "images? give them as your pipeline reads them, before its "
                             "Normalize, or declare their range with --pixel-range)")
    return x, (y.long() if torch.is_tensor(y) else None)


def examples_of(cap: Capture, settings: ForeignSettings) -> int:
    """How many examples the attack reconstructs: the capture's declared count, or the
    assumed --batch-size."""
    if settings.batch_size != "known":
        return int(settings.batch_size)
    if not cap.facts.distinct_examples and NUM_EXAMPLES not in cap.facts.client_metrics:
        raise CaptureError("the capture does not say how many examples the client trained on "
                           "(no 'num-examples' metric in its reply): assume one with "
                           "--batch-size N")
    return declared_data_size(cap.facts, cap.kind)


def check_attackable(path: Path, cap: Capture, name: str, settings: ForeignSettings,
                     originals: Optional[torch.Tensor]) -> None:
    """Before any work: the facts the attack needs are in the capture, and the originals
    are as many as the examples it reconstructs."""
    try:
        size = examples_of(cap, settings)
    except CaptureError as err:
        raise CaptureError(f"{path}: {err}") from None
    if name == "fedavg_replay":
        try:
            local_schedule(cap.facts, size)
        except ValueError as err:
            raise CaptureError(f"{path}: {err}") from None
    if originals is not None and len(originals) != size:
        says = ("the capture says the client trained on" if cap.facts.distinct_examples
                or NUM_EXAMPLES in cap.facts.client_metrics else "the attack assumes")
        raise OriginalsError(f"--originals holds {len(originals)} images, but {says} {size} "
                             f"examples (give that client's {size} examples of round "
                             f"{cap.round}, or --batch-size {len(originals)})")


def partition_of(path: Path, cap: Capture) -> tuple[Optional[int], Optional[str]]:
    """(partition, the capture that names it) of the client behind `cap`: its own record,
    else another observer's capture of the same node in the same round (the eavesdropper
    mod reads its node's partition-id; the server sees only node ids)."""
    facts = cap.facts
    if facts.partition is not None or facts.keyed_by == "partition":
        own = facts.partition
        return (int(own) if own is not None else cap.partition_id), Path(path).name
    for other in sorted(Path(path).parent.glob("*.json")):
        if other.stem == Path(path).stem:
            continue
        try:
            theirs = read_header(other)["meta"]
        except CaptureError:
            continue
        if facts.node_id is not None and theirs.node_id == facts.node_id \
                and theirs.partition is not None:
            return theirs.partition, other.name
    return None, None


def whose(record: dict) -> str:
    """Which client's originals score an attack's capture, in words."""
    node = record.get("node_id")
    who = f"round {record['round']}, {record['observer']} capture" + (
        f" of node {node}" if node is not None else "")
    if record.get("partition") is None:
        return (f"{who}: partition unknown (the client reports none; have it report "
                "'partition-id' in its reply's metrics, or capture it with the eavesdropper "
                "mod too)")
    return (f"{who} = partition {record['partition']} (named by "
            f"{record['partition_named_by']}): that partition's originals score it")


def grant(settings: ForeignSettings, cap: Capture, model: torch.nn.Module,
          originals: Optional[torch.Tensor], true_labels: Optional[torch.Tensor]) -> Knowledge:
    """The knowledge settings, with your originals in the oracle's place."""
    size = examples_of(cap, settings)
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
        first = int((cap.facts.batch_sizes or [cap.facts.batch_size or size])[0])
        bn = batch_bn_stats(model, originals[:first])
    return Knowledge(bn_stats=settings.bn_stats, labels_mode=labels_mode, batch_size=size,
                     labels=labels, bn_targets=bn)


def attack_foreign(capture_path: Path, settings: ForeignSettings, out_dir: Path,
                   progress: bool = True) -> dict:
    """Invert one capture of your app; score it when originals are given. Writes
    OUT/attacks/<stem>.png/.pt/.json and a row in OUT/leakage.jsonl, and returns the
    record (which names the client: node id and partition)."""
    cap = load_capture(capture_path)
    facts = cap.facts
    channels = facts.image_shape[0]
    if settings.pixel_range is not None:
        facts = facts.with_(effects={**facts.effects, "pixel_box": [
            float(v) for v in settings.pixel_range]})
    if (settings.mean is None) != (settings.std is None):
        raise ConfigError("--mean and --std go together (your pipeline's Normalize)")
    if settings.mean is not None:
        facts = facts.with_(mean=per_channel("--mean", settings.mean, channels),
                            std=per_channel("--std", settings.std, channels, positive=True),
                            normalised_input=True)
    cap = replace(cap, facts=facts)  # the user's word over the capture's
    box = facts.effects.get("pixel_box", [0.0, 1.0])
    name = settings.attack or DEFAULT_ATTACK.get(cap.kind, "inverting_gradients")
    if name not in ATTACKS:
        raise ConfigError(f"--attack {name!r} is not one of {sorted(ATTACKS)}")
    originals, true_labels = (load_originals(settings.originals, facts.image_shape, box)
                              if settings.originals is not None else (None, None))
    check_attackable(Path(capture_path), cap, name, settings, originals)
    partition, named_by = partition_of(capture_path, cap)
    attacks_folder(out_dir)
    model = user_model(settings.model, cap.weights_before, facts)
    result, knowledge = invert_capture(cap, model, settings, name, originals, true_labels,
                                       progress)
    return keep_attack(Path(out_dir), cap, name, knowledge, result, originals, true_labels,
                       settings.match_on, settings.lpips_net,
                       fields={"node_id": facts.node_id, "partition": partition,
                               "partition_named_by": named_by, "model": settings.model,
                               "capture": _relative(capture_path, Path(out_dir))})


def _relative(path: Path, folder: Path) -> str:
    """The capture as the record names it: relative to the run folder when inside it."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)


def invert_capture(cap: Capture, model: torch.nn.Module, settings: ForeignSettings, name: str,
                   originals: Optional[torch.Tensor] = None,
                   true_labels: Optional[torch.Tensor] = None, progress: bool = False):
    """(InversionResult, Knowledge): `model` holds the weights before the round and takes
    pixels (`attacker.user_model.normalising` in front of a normalised-input model)."""
    from lab.orchestration.attacks import _progress_bar

    obs = observe(cap, resolve_device(settings.device),
                  model.to(resolve_device(settings.device)))
    knowledge = grant(settings, cap, obs.model, originals, true_labels)
    _warn_if_approximate(cap.facts)
    update, close = _progress_bar(settings.budget.iterations, f"{name} r{cap.round}", progress)
    try:
        result = ATTACKS[name](settings.budget).run(obs, knowledge, seed=settings.seed,
                                                     progress=update)
    finally:
        close()
    return result, knowledge


def _warn_if_approximate(facts) -> None:
    """Shuffled batches over several epochs regroup the examples every epoch; the replay
    keeps the first epoch's grouping, so it is exact for one epoch only."""
    if facts.shuffle and (facts.local_epochs or 1) > 1:
        log.warning("the client shuffles over %s epochs: the replay assumes every epoch "
                    "visits the examples in the first epoch's order (approximate)",
                    facts.local_epochs)
