"""The capture format: what an observer recorded of one client's update in one round.

A capture holds only what crosses the wire plus the public facts of the round (global
weights before it, architecture, declared hyper-parameters, the defenses' declared effects).
Written by an observer (today the honest-but-curious server), read by the attacker; it
never holds private data.

Layout: captures/round_RRR/global.pt (weights before the round, written once) and
captures/round_RRR/<observer>_client_PPP.pt + .json (update + metadata). Each header records
the SHA-256 digest of the weights it was taken against (`meta.weights_sha256`), so a capture
beside another run's global.pt is refused instead of being attacked from the wrong weights.

Captures come from elsewhere: the header is validated field by field when it is read (its
round, partition and observer become file names), tensors load with weights_only=True, and
nothing in a header is ever imported or run. The facts are a typed record
(`fedsim.capture_facts.CaptureFacts`), versioned in the header.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from fedsim.capture_facts import CaptureFacts, FactsFormatError
from fedsim.run_files import RunFileError, read_tensors
from fedsim.run_folder import AGGREGATE, RunFolder, capture_stem  # noqa: F401 - re-exported

log = logging.getLogger("fedsim")


@dataclass
class Capture:
    round: int
    partition_id: int
    observer: str                      # who recorded it: "server", "eavesdropper", "client"
    kind: str                          # "gradient" (FedSGD) or "weights" (FedAvg)
    weights_before: dict[str, torch.Tensor]
    update: dict[str, torch.Tensor]
    facts: CaptureFacts


def round_dir(root: Path, server_round: int) -> Path:
    return RunFolder(root).round_dir(server_round)


class CaptureError(RunFileError):
    """A file that is not a readable fedsim capture; the message names it."""


HEADER_KEYS = ("round", "partition_id", "observer", "kind", "meta")
KINDS = ("gradient", "weights", "masked")   # masked: SecAgg+ shares, a header only
OBSERVER = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_ROUND = 10**6


def _int_in(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_header(header, where) -> dict:
    """The header with its `meta` read into `CaptureFacts`, or CaptureError naming the
    first field that is not allowed. Round, partition and observer become file names, so
    each is held to what fedsim writes."""
    if not isinstance(header, dict):
        raise CaptureError(f"{where} is not a capture header (expected a JSON object)")
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise CaptureError(f"{where} is not a capture header (missing {', '.join(missing)})")
    unknown = sorted(set(header) - set(HEADER_KEYS))
    if unknown:
        raise CaptureError(f"{where}: unknown key(s) {unknown} in the capture header; it holds "
                           f"only {list(HEADER_KEYS)}")
    problems = [
        (_int_in(header["round"], 0, MAX_ROUND), "round", f"an integer in [0, {MAX_ROUND}]"),
        (_int_in(header["partition_id"], AGGREGATE, 2**64 - 1), "partition_id",
         "an integer in [-1, 2**64 - 1] (a partition, a node id, or -1 for an aggregate)"),
        (isinstance(header["observer"], str) and OBSERVER.fullmatch(header["observer"]),
         "observer", f"a name matching {OBSERVER.pattern} (server, eavesdropper, client, ...)"),
        (header["kind"] in KINDS, "kind", f"one of {list(KINDS)}"),
        (isinstance(header["meta"], dict), "meta", "a JSON object"),
    ]
    for ok, name, allowed in problems:
        if not ok:
            raise CaptureError(f"{where}: {name} {header[name]!r} is not allowed in a capture "
                               f"header (must be {allowed})")
    try:
        facts = CaptureFacts.read(header["meta"], str(where))
    except FactsFormatError as err:
        raise CaptureError(str(err)) from None
    return {**header, "meta": facts}


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes (not of the file, whose
    bytes depend on how torch.save named it)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        t = weights[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


_known_digests: dict[str, tuple[int, int, str]] = {}  # global.pt -> (mtime_ns, size, digest)


def _file_digest(path: Path) -> str:
    """The digest of a global.pt, read once per process while the file stays the same."""
    st = path.stat()
    known = _known_digests.get(str(path))
    if known and known[:2] == (st.st_mtime_ns, st.st_size):
        return known[2]
    digest = weights_digest(_tensors(path))
    _known_digests[str(path)] = (st.st_mtime_ns, st.st_size, digest)
    return digest


def _atomic(path: Path, write) -> None:
    """Write to a temporary name, then rename: observers in several processes may write the
    same round's files at once, and a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_capture(root: Path, cap: Capture) -> Path:
    """Write the capture (the header validated as a reader will validate it) and, once per
    round, the weights before it. A round folder whose global.pt holds other weights (a
    second run into the same folder) keeps them, with a warning: the capture records its
    own digest and `load_capture` refuses it."""
    facts = cap.facts
    if cap.weights_before:
        facts = facts.with_(weights_sha256=weights_digest(cap.weights_before))
    header = {"round": cap.round, "partition_id": cap.partition_id, "observer": cap.observer,
              "kind": cap.kind, "meta": facts.to_meta()}
    check_header(header, f"capture of round {cap.round} by {cap.observer!r}")
    folder = round_dir(root, cap.round)
    folder.mkdir(parents=True, exist_ok=True)
    global_path = RunFolder(root).global_weights(cap.round)
    if cap.weights_before:
        if not global_path.exists():
            _atomic(global_path, lambda p: torch.save(cap.weights_before, p))
        elif _file_digest(global_path) != facts.weights_sha256:
            log.warning("%s holds other weights than the %s capture of round %d was taken "
                        "against (another run's captures in this folder?): fedsim attack "
                        "will refuse that capture", global_path, cap.observer, cap.round)
    stem = folder / capture_stem(cap.observer, cap.partition_id)
    if cap.update:  # an observer that saw nothing to invert (masked shares) keeps a header
        _atomic(stem.with_suffix(".pt"), lambda p: torch.save(cap.update, p))
    _atomic(stem.with_suffix(".json"),
            lambda p: p.write_text(json.dumps(header, indent=2, sort_keys=True)))
    return stem.with_suffix(".pt")


def read_header(path: Path) -> dict:
    """The capture's JSON header (round, partition, observer, kind, public facts),
    validated: anything but what `save_capture` writes is refused in one line."""
    path = Path(path).with_suffix(".json")
    try:
        header = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CaptureError(f"{path} is not a readable capture header ({type(err).__name__}: "
                           f"{err})") from None
    return check_header(header, path)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved by `save_capture`; loaded with weights_only=True, so a crafted
    file cannot run code, and anything else is refused with the file's name."""
    try:
        return read_tensors(path, "capture tensor file")
    except RunFileError as err:
        raise CaptureError(str(err)) from None


def load_capture(path: Path) -> Capture:
    """Load from the update's .pt path (or its .json); refused when the round's global.pt
    is not the weights the capture records it was taken against."""
    path = Path(path).with_suffix(".pt")
    if not path.is_file():
        raise FileNotFoundError(f"no capture at {path}")
    header = read_header(path)
    global_path = path.parent / "global.pt"
    weights = _tensors(global_path)
    recorded = header["meta"].weights_sha256
    if recorded is not None and weights_digest(weights) != recorded:
        raise CaptureError(f"{path} was taken against other weights than {global_path} holds "
                           f"(digest {recorded[:12]}... recorded, "
                           f"{weights_digest(weights)[:12]}... found): captures of two runs "
                           "mixed in one folder? Attack it beside its own run's global.pt")
    return Capture(weights_before=weights, update=_tensors(path), round=header["round"],
                   partition_id=header["partition_id"], observer=header["observer"],
                   kind=header["kind"], facts=header["meta"])


def list_captures(run_dir: Path, observer: str = "server") -> list[Path]:
    """The invertible captures of one observer (a header without tensors is not listed)."""
    root = RunFolder(run_dir).captures
    return sorted([*root.glob(f"round_*/{observer}_client_*.pt"),
                   *root.glob(f"round_*/{observer}_aggregate.pt")])
