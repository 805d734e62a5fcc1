"""How many attacked updates does a sweep cell need to resolve a 1 dB difference?

For each shipped CPU sweep, a pilot runs its baseline setting and the settings whose
difference from it is smallest (the hardest comparison) with many attacked updates (all
clients of several rounds), then measures the spread: the standard deviation of PSNR over
updates within a setting, and of the paired difference from the baseline setting over the
same private batches. The updates a cell needs for a 95% interval of half-width 1 dB
around a paired difference is (1.96 sd / 1)^2 (`lab.stats.updates_needed`); the sweep
files' `attack.rounds` x `attack.clients` are set from it.

Writes benchmarks/results/leakage_spread.json:

    python benchmarks/leakage_spread.py [--only paper_defenses ...] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w

from lab.stats import compare, updates_needed
from lab.sweep import run_sweep
from lab.sweep_stats import settings_of

SWEEPS = Path(__file__).resolve().parent.parent / "experiments" / "sweeps"

# per sweep: fields set for the pilot (many updates; the pilot measures leakage only, so
# training stops after the attacked rounds) and the settings kept (grid values or labels)
PILOTS = {
    "paper_defenses": {
        "fields": {"federation.num_rounds": 4, "attack.rounds": [1, 2, 3, 4],
                   "attack.clients": "all"},
        "cells": ["none", "GradPrune 0.5", "GradPrune 0.7", "MixUp"],
    },
    "training_stage": {
        "fields": {"attack.clients": "all"},
        "cells": {"early (round 1)": {"attack.rounds": [1, 2, 3, 4]},
                  "late (round 20)": {"attack.rounds": [17, 18, 19, 20]}},
    },
    "batch_size": {
        "fields": {"federation.num_clients": 16, "attack.clients": "all"},
        "grid": {"federation.batch_size": [16, 32]},
    },
    "paper_assumptions": {
        "fields": {"federation.num_clients": 16, "attack.clients": "all"},
        "grid": {"federation.batch_size": [16], "attack.knowledge.bn_stats": ["exact", "none"],
                 "attack.knowledge.labels": ["known"]},
    },
}


def _set(data: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for key in path:
        data = data.setdefault(key, {})
    data[last] = value


def pilot_file(name: str, folder: Path) -> Path:
    """The sweep file with the pilot's fields and only its settings."""
    data = tomllib.loads((SWEEPS / f"{name}.toml").read_text())
    spec = PILOTS[name]
    data.pop("scales", None)
    for key, value in spec["fields"].items():
        _set(data, key, value)
    sweep = data.setdefault("sweep", {})
    if "grid" in spec:
        sweep.update(spec["grid"])
    if isinstance(spec.get("cells"), list):
        sweep["cells"] = [c for c in sweep["cells"] if c.get("label") in spec["cells"]]
    elif isinstance(spec.get("cells"), dict):
        sweep["cells"] = [{"label": label, **copy.deepcopy(fields)}
                          for label, fields in spec["cells"].items()]
    data["name"] = f"pilot-{name}"
    path = folder / f"pilot_{name}.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def spread(root: Path) -> dict:
    settings = settings_of(root)
    base = settings[0]
    out = {"settings": []}
    for s in settings:
        psnr = [a["psnr"] for a in s.attacks]
        row = {"label": s.label, "updates": len(psnr),
               "psnr_mean": statistics.fmean(psnr) if psnr else None,
               "psnr_sd": statistics.stdev(psnr) if len(psnr) > 1 else None}
        if s is not base:
            own, ref = s.values("psnr", "server"), base.values("psnr", "server")
            c = compare(own, ref)
            if c.paired:
                common = sorted(set(own) & set(ref))
                sd = statistics.stdev([own[k] - ref[k] for k in common])
            else:  # a difference of two means of n each: sd^2 = sd_a^2 + sd_b^2 (times 1/n)
                sd = (row["psnr_sd"] ** 2 + out["settings"][0]["psnr_sd"] ** 2) ** 0.5
            row.update({"compared_updates": c.n, "paired": c.paired,
                        "difference": c.difference, "difference_low": c.low,
                        "difference_high": c.high, "difference_sd": sd,
                        "updates_for_1db": updates_needed(sd)})
        out["settings"].append(row)
    needed = [r["updates_for_1db"] for r in out["settings"] if r.get("updates_for_1db")]
    out["updates_for_1db"] = max(needed) if needed else None
    return out


def main() -> None:
    from results_io import write_result

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=sorted(PILOTS), default=sorted(PILOTS))
    p.add_argument("--output-dir", type=Path)
    args = p.parse_args()
    out_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="spread"))
    results = {}
    for name in args.only:
        start = time.perf_counter()
        root, _ = run_sweep(pilot_file(name, out_dir), str(out_dir), progress=True)
        results[name] = {**spread(root), "seconds": time.perf_counter() - start,
                         "pilot": PILOTS[name]}
        print(name, results[name]["updates_for_1db"], flush=True)
    path = Path(__file__).parent / "results" / "leakage_spread.json"
    if path.is_file():  # keep the other sweeps' earlier pilots
        import json

        results = {**json.loads(path.read_text()), **results}
    write_result("leakage_spread", results)


if __name__ == "__main__":
    main()
