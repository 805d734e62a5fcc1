"""Scripted sweeps: a grid of experiments that runs unattended and resumes.

A sweep file is an experiment file with a `[sweep]` table: every key is a config field
(dotted: "federation.batch_size") with a list of values, and the cells are their product,
crossed with the hand-picked `[[sweep.cells]]` entries (each a set of fields, optionally a
`label`). `[scales.NAME]` tables hold the fields that switch the whole sweep to another
scale (`--scale paper`: ResNet-18 on CIFAR-10, 10,000 iterations).

Every cell is validated before any starts (a bad one is named). Each cell is one
`fedsim run` in its own folder under OUTPUT_DIR/NAME/cells/; a finished cell leaves
`done.json` with a fingerprint of its config, so a sweep started again skips the cells
finished with the same config and redoes the others.
Cells run as separate processes, `--parallel` at a time: on this machine, or with
`--ray-address` as Ray tasks on that cluster (any node; OUTPUT_DIR on storage every node
sees), where each cell's clients and attacks run too. The combined report compares the
cells.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fedsim.config import ConfigError, ExperimentConfig, from_dict


@dataclass
class Cell:
    index: int
    label: str
    cfg: ExperimentConfig

    @property
    def fingerprint(self) -> str:
        """Of the cell's resolved config: a finished cell counts only for the same config."""
        import hashlib

        return hashlib.sha256(self.cfg.to_toml().encode()).hexdigest()[:16]

    def finished_in(self, folder: Path) -> bool:
        done = folder / "done.json"
        return done.is_file() and json.loads(done.read_text()).get("config") == self.fingerprint

    @property
    def folder_name(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.label).strip("-")[:60] or "cell"
        return f"{self.index:02d}-{slug}"


def _set(data: dict, dotted: str, value: Any) -> None:
    """Set a (dotted) field; a table given for a table field is merged into it."""
    *path, last = dotted.split(".")
    node = data
    for key in path:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"sweep: field {dotted!r}: {key!r} is not a table")
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        merged = copy.deepcopy(node[last])
        for k, v in value.items():
            _set(merged, k, v)
        node[last] = merged
    else:
        node[last] = copy.deepcopy(value)


def _label(picked: dict, point: dict) -> str:
    """The hand-picked cell's label (or its fields), then the grid point's fields."""
    parts = [str(picked["label"])] if "label" in picked else [
        f"{_field(k)}={_short(v)}" for k, v in picked.items()]
    parts += [f"{_field(k)}={_short(v)}" for k, v in point.items()]
    return ", ".join(parts) or "base"


def _field(dotted: str) -> str:
    """A field's last name ("federation.batch_size" -> "batch_size"), as tables show it."""
    return dotted.rsplit(".", 1)[-1]


def _short(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict) and "name" in value[0]:
        return "+".join(str(v["name"]) for v in value) or "none"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def load_sweep(path: Path, scale: Optional[str] = None) -> tuple[str, list[Cell]]:
    """(sweep name, cells), every cell validated before any work."""
    from lab.validation import validate

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"sweep: {path} is not valid TOML: {err}") from None
    sweep = data.pop("sweep", {})
    scales = data.pop("scales", {})
    if scale is not None:
        if scale not in scales:
            raise ConfigError(f"sweep: --scale {scale!r} is not one of {sorted(scales)} "
                              f"(the [scales.NAME] tables of {path.name})")
        for key, value in scales[scale].items():
            _set(data, key, value)
    hand_picked = sweep.pop("cells", [{}])
    if not hand_picked:
        raise ConfigError("sweep: [[sweep.cells]] is empty")
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep: field {key!r} must be a non-empty list of values")
    grid = [dict(zip(sweep, combo)) for combo in itertools.product(*sweep.values())]
    cells = []
    for i, (picked, point) in enumerate(itertools.product(hand_picked, grid)):
        overrides = {**picked, **point}
        label = _label(picked, point)
        cell_data = copy.deepcopy(data)
        for key, value in overrides.items():
            if key != "label":
                _set(cell_data, key, value)
        cell_data["name"] = f"{data.get('name', 'sweep')}-{i:02d}"
        try:
            cfg = validate(from_dict(cell_data))
        except ConfigError as err:
            raise ConfigError(f"sweep cell {i} ({label}): {err}") from None
        cells.append(Cell(i, label, cfg))
    return str(data.get("name", path.stem)), cells


def _cell_command(cell: Cell, folder: Path, ray_address: Optional[str]) -> list[str]:
    """The cell's `fedsim run` (its config written beside its folder)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    spec = folder.parent / f"{folder.name}.toml"
    spec.write_text(cell.cfg.to_toml())
    return [sys.executable, "-m", "lab.cli", "run", str(spec), "--run-dir", str(folder),
            "--overwrite"] + (["--ray-address", ray_address] if ray_address else [])


def _execute(cmd: list[str], log_path: str) -> tuple[int, dict]:
    """Run one cell's process; (exit status, where it ran: host, and Ray node in a task)."""
    import socket

    with open(log_path, "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    where = {"host": socket.gethostname(), "ray_node": None}
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        where["ray_node"] = sys.modules["ray"].get_runtime_context().get_node_id()
    return code, where


def _finish(cell: Cell, folder: Path, code: int, where: dict) -> dict:
    outcome = {"cell": cell.index, "label": cell.label, "exit_status": code,
               "config": cell.fingerprint, **where}
    if code in (0, 3):  # finished (3: some clients failed, counted in the cell's tables)
        (folder / "done.json").write_text(json.dumps(outcome))
    return outcome


def _run_cell(cell: Cell, folder: Path, ray_address: Optional[str]) -> dict:
    cmd = _cell_command(cell, folder, ray_address)
    return _finish(cell, folder, *_execute(cmd, str(folder.parent / f"{folder.name}.log")))


def _run_cells_on_ray(cells: list[Cell], root: Path, ray_address: str, parallel: int,
                      on_done) -> list[dict]:
    """Every cell as a Ray task on the cluster at `ray_address`, `parallel` at a time. A
    cell's process may land on any node, so OUTPUT_DIR must be a folder every node sees
    (shared storage); the cell's own clients and attacks attach to the same cluster. The
    task reserves no CPU: the cell's clients reserve theirs."""
    import ray

    ray.init(address=ray_address, ignore_reinit_error=True, log_to_driver=False)
    task = ray.remote(num_cpus=0, max_retries=0)(_execute)
    waiting = list(cells)
    running: dict = {}
    outcomes = []
    try:
        while waiting or running:
            while waiting and len(running) < max(parallel, 1):
                cell = waiting.pop(0)
                folder = root / "cells" / cell.folder_name
                cmd = _cell_command(cell, folder, ray_address)
                ref = task.remote(cmd, str(folder.parent / f"{folder.name}.log"))
                running[ref] = (cell, folder)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            cell, folder = running.pop(ref)
            try:
                outcomes.append(_finish(cell, folder, *ray.get(ref)))
            except ray.exceptions.RayError as err:  # its node died: the cell failed, not all
                outcomes.append({"cell": cell.index, "label": cell.label, "exit_status": -1,
                                 "config": cell.fingerprint, "error": str(err)[:300]})
            on_done()
    finally:
        ray.shutdown()
    return outcomes


def run_sweep(path: Path, output_dir: Optional[str] = None, scale: Optional[str] = None,
              parallel: int = 1, ray_address: Optional[str] = None,
              progress: bool = True) -> tuple[Path, list[dict]]:
    """Run every unfinished cell; returns the sweep folder and the outcome of each cell
    run now (finished cells are skipped)."""
    from tqdm.auto import tqdm

    name, cells = load_sweep(path, scale)
    root = (Path(output_dir or cells[0].cfg.output_dir) / name).resolve()  # Ray workers'
    # folders differ from the driver's
    (root / "cells").mkdir(parents=True, exist_ok=True)
    (root / "sweep.toml").write_text(Path(path).read_text())
    pending = [c for c in cells if not c.finished_in(root / "cells" / c.folder_name)]
    bar = tqdm(total=len(cells), initial=len(cells) - len(pending), desc=f"sweep {name}",
               unit="cell", disable=not progress)
    outcomes = []
    if ray_address:
        outcomes = _run_cells_on_ray(pending, root, ray_address, parallel,
                                     lambda: bar.update(1))
    else:
        with ThreadPoolExecutor(max_workers=max(parallel, 1)) as pool:
            futures = [pool.submit(_run_cell, c, root / "cells" / c.folder_name, None)
                       for c in pending]
            for future in futures:
                outcomes.append(future.result())
                bar.update(1)
    bar.close()
    (root / "cells.json").write_text(json.dumps(
        [{"cell": c.index, "label": c.label, "folder": f"cells/{c.folder_name}"}
         for c in cells], indent=2))
    return root, outcomes
