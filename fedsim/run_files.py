"""Reading and writing inside a run folder that may come from elsewhere.

Run folders and captures are exchanged (a GPU host attacks what a CPU machine captured; a
team attacks another team's captures), so nothing in them is trusted: a path a file names
(a `leakage.jsonl` row's `result`, say) or that fedsim builds from one (a capture's
observer) is resolved inside the folder it belongs to and refused when it leaves it, and
tensor files load with `torch.load(weights_only=True)`, so a crafted pickle runs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


class RunFileError(ValueError):
    """A file of a run folder that fedsim refuses to read or write; the message names it."""


def inside(folder: Path, path, what: str) -> Path:
    """`path` (relative to `folder`, or absolute) resolved, symbolic links followed;
    refused when it is not inside `folder`."""
    root = Path(folder).resolve()
    if not isinstance(path, (str, Path)) or not str(path):
        raise RunFileError(f"{what}: {path!r} is not a path inside {root}")
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise RunFileError(f"{what}: {str(path)!r} leaves {root} (resolves to {resolved}); "
                           "fedsim reads and writes only inside the folder")
    return resolved


def read_tensors(path: Path, what: str = "tensor file") -> dict[str, torch.Tensor]:
    """A dict of tensors saved by fedsim (a capture's update or weights, an attack's
    reconstructions); anything else, a crafted pickle included, is refused in one line."""
    path = Path(path)
    if not path.is_file():
        raise RunFileError(f"{path}: no such {what}")
    try:
        data = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, foreign or unsafe: one clear line
        raise RunFileError(f"{path} is not a readable {what} "
                           f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    if not isinstance(data, dict) or not all(torch.is_tensor(v) for v in data.values()):
        raise RunFileError(f"{path} is not a {what} (expected a dict of tensors)")
    return data


def read_json(path: Path, what: str = "JSON file") -> dict:
    """A JSON object fedsim wrote, or one line saying why it cannot be read."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFileError(f"{path} is not a readable {what} ({type(err).__name__}: "
                           f"{err})") from None
    if not isinstance(data, dict):
        raise RunFileError(f"{path} is not a {what} (expected a JSON object)")
    return data
