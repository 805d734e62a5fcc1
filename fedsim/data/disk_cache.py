"""The embedded sets, built once per machine and read back by every later process.

Building digits imports scikit-learn and splits the set (0.9 s of CPU here), natural32
reads and crops eleven photos (about 2 s); reading either back from a tensor file takes
milliseconds. That matters because fedsim starts many short processes that each need the
set: every Ray worker of a simulation, and in a deployment every message's ClientApp
process (Flower's `--isolation process`).

The file's name is a hash of everything the set depends on: its name and arguments, the
loader's source (`fedsim/data/datasets.py`) and the versions of the packages that ship the
source data, so a change to any of them builds a new file. Files are written atomically
and read with `torch.load(weights_only=True)` (tensors only; nothing in a file can run); a
file that does not read back is built again. $FEDSIM_DATA_CACHE names the folder (default
$XDG_CACHE_HOME/fedsim/datasets, ~/.cache/fedsim/datasets); `off` turns the cache off. The
folder may be deleted at any time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import torch

from fedsim.user_cache import user_cache

if TYPE_CHECKING:
    from fedsim.data.datasets import Dataset

log = logging.getLogger("fedsim")

# the packages whose shipped files each embedded set is made of
SOURCES = {"digits": ("scikit-learn",), "natural32": ("scikit-image", "scikit-learn",
                                                       "matplotlib")}
_FIELDS = ("x_train", "y_train", "x_test", "y_test")


def cache_folder() -> Optional[Path]:
    """$FEDSIM_DATA_CACHE, else $XDG_CACHE_HOME/fedsim/datasets; None when it is `off`."""
    if os.environ.get("FEDSIM_DATA_CACHE", "").lower() == "off":
        return None
    return user_cache("datasets", "FEDSIM_DATA_CACHE")


def cache_key(name: str, args: dict) -> str:
    """A hash of the set's name, its arguments, the loader's source and the versions of
    the packages its data comes from."""
    source = (Path(__file__).with_name("datasets.py")).read_bytes()
    versions = {pkg: importlib.metadata.version(pkg) for pkg in SOURCES[name]}
    text = json.dumps({"name": name, "args": args, "versions": versions}, sort_keys=True)
    return hashlib.sha256(source + text.encode()).hexdigest()[:24]


def cached(name: str, args: dict, build: Callable[[], "Dataset"]) -> "Dataset":
    """`build()`'s set, from the cache when this machine built it before."""
    from fedsim.data.datasets import Dataset  # noqa: F811 - it imports this module

    folder = cache_folder()
    if folder is None or name not in SOURCES:
        return build()
    path = folder / f"{name}-{cache_key(name, args)}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            return Dataset(name, *(saved[f] for f in _FIELDS), int(saved["num_classes"]),
                           tuple(saved["class_names"]))
        except Exception as err:  # noqa: BLE001 - any unreadable file is simply rebuilt
            log.warning("data cache %s does not read back (%s): building the set again",
                        path, type(err).__name__)
    ds = build()
    _write(path, ds)
    return ds


def _write(path: Path, ds: "Dataset") -> None:
    """`ds` into `path`, whole or not at all: concurrent builders race harmlessly. A
    read-only or full cache costs only the next process time, so it is a warning (torch's
    zip writer says a full disk as a RuntimeError)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            torch.save({**{f: getattr(ds, f) for f in _FIELDS},
                        "num_classes": ds.num_classes, "class_names": list(ds.class_names)},
                       fh)
        os.chmod(tmp, 0o644)  # as any cache file, not a temporary file's 0600
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        log.warning("data cache %s not written (%s)", path, err)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
