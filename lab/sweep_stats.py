"""A sweep's comparison table: replicates grouped, every figure with its interval and n,
and each setting against the baseline setting by a paired difference.

Cells whose configs differ only by `seed` are replicates of one setting: their attacked
updates are pooled (n counts updates) and their final accuracies form the accuracy
interval (n counts seeds). Cells of one sweep with the same seed train on the same private
batches (the batch oracle is a pure function of seed, round and partition), so a setting
is compared with the baseline setting update by update, keyed by (seed, round, client,
observer); where no update is common (secure aggregation attacks the aggregate), the two
means are compared unpaired. The baseline is the first setting, or the one whose label
`[sweep] baseline = "..."` names.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fedsim.privacy import NOT_ACCOUNTED
from fedsim.records import read_rows
from fedsim.run_files import inside
from lab.stats import compare, summarize
from lab.tables import FIGURES
from lab.sweep import setting_label
from fedsim.run_folder import RunFolder

COMPARED = ("psnr", "ssim", "lpips")  # figures compared with the baseline setting


@dataclass
class Setting:
    """One row of the sweep table: a setting and its finished replicates."""

    label: str
    key: str
    cells: list[dict] = field(default_factory=list)       # cells.json entries
    attacks: list[dict] = field(default_factory=list)     # scored rows, with "seed"
    oracle: list[dict] = field(default_factory=list)      # oracle-tuned rows (upper bound)
    accuracy: dict[int, float] = field(default_factory=dict)  # seed -> final accuracy
    epsilon: list[float] = field(default_factory=list)
    accounting: str = NOT_ACCOUNTED  # what the epsilon bounds (fedsim.privacy)
    unfinished: int = 0

    def values(self, figure: str, observer: str) -> dict:
        """(seed, round, client) -> the figure of each attacked update this observer saw."""
        return {(a["seed"], a["round"], a["partition_id"]): a.get(figure)
                for a in self.attacks if a["observer"] == observer}


def _setting_key(config: dict) -> str:
    """Of a cell's config without its seed and name: replicates share it."""
    rest = {k: v for k, v in config.items() if k not in ("seed", "name")}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:16]


def settings_of(root: Path) -> list[Setting]:
    """The sweep's settings in cell order, each with its finished replicates' results."""
    root = Path(root)
    out: dict[str, Setting] = {}
    for cell in json.loads((root / "cells.json").read_text()):
        folder = inside(root, cell["folder"], f"{root / 'cells.json'}: a cell's folder")
        spec = folder.parent / f"{folder.name}.toml"
        config = tomllib.loads(spec.read_text()) if spec.is_file() else {"cell": cell["cell"]}
        key = _setting_key(config)
        setting = out.setdefault(key, Setting(setting_label(cell["label"]), key))
        setting.cells.append(cell)
        if not RunFolder(folder).done.is_file():
            setting.unfinished += 1
            continue
        seed = int(config.get("seed", 0))
        setting.attacks += [{**r, "seed": seed} for r in read_rows(RunFolder(folder).leakage)
                            if r.get("psnr") is not None]
        setting.oracle += [r for r in read_rows(RunFolder(folder).oracle_leakage)
                           if r.get("psnr") is not None]
        metrics = read_rows(RunFolder(folder).metrics)
        evaluated = [r for r in metrics if r.get("global_accuracy") is not None]
        if evaluated:
            setting.accuracy[seed] = float(evaluated[-1]["global_accuracy"])
        eps = [r for r in metrics if r.get("dp_epsilon") is not None]
        if eps:
            setting.epsilon.append(float(eps[-1]["dp_epsilon"]))
            setting.accounting = eps[-1].get("dp_accounting") or setting.accounting
    return list(out.values())


def baseline_label(root: Path) -> Optional[str]:
    """`[sweep] baseline` of the sweep file kept in the sweep folder, if it names one."""
    path = Path(root) / "sweep.toml"
    if not path.is_file():
        return None
    return tomllib.loads(path.read_text()).get("sweep", {}).get("baseline")


def sweep_table(root: Path) -> list[dict]:
    """One row per setting and observer: figures with interval and n, the accuracy over
    seeds, and the paired difference from the baseline setting."""
    settings = settings_of(root)
    wanted = baseline_label(root)
    base = next((s for s in settings if s.label == wanted), settings[0] if settings else None)
    rows = []
    for s in settings:
        observers = sorted({a["observer"] for a in s.attacks}) or [None]
        accuracy = summarize(s.accuracy.values())
        for observer in observers:
            mine = [a for a in s.attacks if a["observer"] == observer]
            row = {"label": s.label, "observer": observer, "replicates": len(s.accuracy),
                   "unfinished": s.unfinished, "attacks": len(mine),
                   "baseline": s is base, **accuracy.as_row("global_accuracy"),
                   "dp_epsilon": max(s.epsilon) if s.epsilon else None,
                   "dp_accounting": s.accounting,
                   "folders": " ".join(c["folder"] for c in s.cells),
                   "status": "finished" if not s.unfinished else
                   f"{s.unfinished} of {len(s.cells)} replicates not finished"}
            for figure, higher in FIGURES.items():
                row.update(summarize((a.get(figure) for a in mine), higher).as_row(figure))
            # a tuned setting's upper bound, in a column of its own (never in the figures)
            row.update(summarize(a["psnr"] for a in s.oracle if a["observer"] == observer
                                 ).as_row("oracle_psnr"))
            if base is not None and s is not base:
                if observer is not None:
                    for figure in COMPARED:
                        row.update(compare(s.values(figure, observer),
                                           _reference(base, figure, observer)).as_row(figure))
                # accuracy is compared whether or not anything was attacked
                row.update(compare(s.accuracy, base.accuracy).as_row("accuracy"))
            rows.append(row)
    return rows


def _reference(base: Setting, figure: str, observer: str) -> dict:
    """The baseline setting's updates seen by the same observer, else by any observer (a
    SecAgg+ cell's server sees the aggregate where the baseline's server saw clients)."""
    own = base.values(figure, observer)
    if own:
        return own
    return {k: v for o in {a["observer"] for a in base.attacks}
            for k, v in base.values(figure, o).items()}
