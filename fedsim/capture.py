"""The capture format: what an observer recorded of one client's update in one round.

A capture holds only what crosses the wire plus the public facts of the round (global
weights before it, architecture, declared hyper-parameters, the defenses' declared effects).
Written by an observer (today the honest-but-curious server), read by the attacker; it
never holds private data.

Layout: captures/round_RRR/global.pt (weights before the round, written once) and
captures/round_RRR/<observer>_client_PPP.pt + .json (update + metadata).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Capture:
    round: int
    partition_id: int
    observer: str                      # who recorded it: "server", "eavesdropper", "client"
    kind: str                          # "gradient" (FedSGD) or "weights" (FedAvg)
    weights_before: dict[str, torch.Tensor]
    update: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def round_dir(root: Path, server_round: int) -> Path:
    return Path(root) / "captures" / f"round_{server_round:03d}"


AGGREGATE = -1  # partition_id of a capture that holds only the round's aggregate


def capture_stem(observer: str, partition_id: int) -> str:
    if partition_id == AGGREGATE:
        return f"{observer}_aggregate"
    return f"{observer}_client_{partition_id:03d}"


def _atomic(path: Path, write) -> None:
    """Write to a temporary name, then rename: observers in several processes may write the
    same round's files at once, and a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_capture(root: Path, cap: Capture) -> Path:
    folder = round_dir(root, cap.round)
    folder.mkdir(parents=True, exist_ok=True)
    global_path = folder / "global.pt"
    if not global_path.exists():
        _atomic(global_path, lambda p: torch.save(cap.weights_before, p))
    stem = folder / capture_stem(cap.observer, cap.partition_id)
    if cap.update:  # an observer that saw nothing to invert (masked shares) keeps a header
        _atomic(stem.with_suffix(".pt"), lambda p: torch.save(cap.update, p))
    header = {k: v for k, v in asdict(cap).items() if k not in ("weights_before", "update")}
    _atomic(stem.with_suffix(".json"),
            lambda p: p.write_text(json.dumps(header, indent=2, sort_keys=True)))
    return stem.with_suffix(".pt")


class CaptureError(ValueError):
    """A file that is not a readable fedsim capture; the message names it."""


def read_header(path: Path) -> dict:
    """The capture's JSON header (round, partition, observer, kind, public facts)."""
    path = Path(path).with_suffix(".json")
    try:
        header = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CaptureError(f"{path} is not a readable capture header ({type(err).__name__}: "
                           f"{err})") from None
    missing = [k for k in ("round", "partition_id", "observer", "kind", "meta") if k not in header]
    if missing:
        raise CaptureError(f"{path} is not a capture header (missing {', '.join(missing)})")
    return header


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved by `save_capture`; loaded with weights_only=True, so a crafted
    file cannot run code, and anything else is refused with the file's name."""
    try:
        data = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, foreign or unsafe: one clear line
        raise CaptureError(f"{path} is not a readable capture tensor file "
                           f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    if not isinstance(data, dict) or not all(torch.is_tensor(v) for v in data.values()):
        raise CaptureError(f"{path} is not a capture tensor file (expected a dict of tensors)")
    return data


def load_capture(path: Path) -> Capture:
    """Load from the update's .pt path (or its .json)."""
    path = Path(path).with_suffix(".pt")
    if not path.is_file():
        raise FileNotFoundError(f"no capture at {path}")
    header = read_header(path)
    return Capture(weights_before=_tensors(path.parent / "global.pt"), update=_tensors(path),
                   **header)


def list_captures(run_dir: Path, observer: str = "server") -> list[Path]:
    """The invertible captures of one observer (a header without tensors is not listed)."""
    root = Path(run_dir) / "captures"
    return sorted([*root.glob(f"round_*/{observer}_client_*.pt"),
                   *root.glob(f"round_*/{observer}_aggregate.pt")])
