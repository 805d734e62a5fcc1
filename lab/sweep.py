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
import os
import re
import signal
import subprocess
import sys
import threading
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from fedsim.config import ConfigError, ExperimentConfig, from_dict
from fedsim.runtime import ENV_PARENT, Exit, Interrupted, restore_signals
from fedsim.run_folder import RunFolder

# a cell that exits so has finished (some clients may have failed, counted in its tables)
FINISHED = (Exit.OK, Exit.CLIENT_FAILURES)


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
        done = RunFolder(folder).done
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


def setting_label(label: str) -> str:
    """A replicate's label without its seed: the label of its setting."""
    return re.sub(r"(^|, )seed=\d+", "", label).strip(", ") or "base"


def _field(dotted: str) -> str:
    """A field's last name ("federation.batch_size" -> "batch_size"), as tables show it."""
    return dotted.rsplit(".", 1)[-1]


def _short(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict) and "name" in value[0]:
        return "+".join(str(v["name"]) for v in value) or "none"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def _table(value: Any, name: str, holds: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"sweep: {name} must be a table of {holds}, not {value!r}")
    return value


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
    sweep = _table(data.pop("sweep", {}), "[sweep]", "field = [values]")
    scales = _table(data.pop("scales", {}), "[scales]", "NAME = {fields}")
    if scale is not None:
        if scale not in scales:
            raise ConfigError(f"sweep: --scale {scale!r} is not one of {sorted(scales)} "
                              f"(the [scales.NAME] tables of {path.name})")
        for key, value in _table(scales[scale], f"[scales.{scale}]", "field = value").items():
            _set(data, key, value)
    baseline = sweep.pop("baseline", None)  # the setting the report compares others with
    hand_picked = sweep.pop("cells", [{}])
    if not isinstance(hand_picked, list) or not all(isinstance(c, dict) for c in hand_picked):
        raise ConfigError(f"sweep: sweep.cells must be a list of tables ([[sweep.cells]], "
                          f"each a set of fields and an optional label), not {hand_picked!r}")
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
    if baseline is not None and not any(baseline in (c.label, setting_label(c.label))
                                        for c in cells):
        raise ConfigError(f"sweep: baseline {baseline!r} is not the label of any setting "
                          f"({', '.join(sorted({setting_label(c.label) for c in cells}))})")
    return str(data.get("name", path.stem)), cells


def _cell_command(cell: Cell, folder: Path, ray_address: Optional[str]) -> list[str]:
    """The cell's `fedsim run` (its config written beside its folder)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    spec = folder.parent / f"{folder.name}.toml"
    spec.write_text(cell.cfg.to_toml())
    return [sys.executable, "-m", "lab.cli", "run", str(spec), "--run-dir", str(folder),
            "--overwrite"] + (["--ray-address", ray_address] if ray_address else [])


class _Stop:
    """One SIGINT or SIGTERM to the sweep goes on to every running cell (each runs in a
    process group of its own, so a terminal's Ctrl-C reaches the sweep alone, once): the
    cells stop as one `fedsim run` does, no further cell starts, and the sweep ends with
    `Interrupted` once they have. A cell's process also stops (SIGTERM) if the process
    that started it dies, `kill -9` included (`fedsim.runtime.stop_with_parent`)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.stopped: list[int] = []  # the cells it stopped
        self._procs: dict = {}  # running cell process -> its cell's index
        self._lock = threading.RLock()  # re-entrant: a second signal may come mid-handler
        self._replaced: dict = {}

    def install(self) -> None:
        """Take SIGINT and SIGTERM (again after Ray, which sets its own handlers)."""
        if threading.current_thread() is threading.main_thread():
            replaced = {s: signal.signal(s, self._on_signal)
                        for s in (signal.SIGINT, signal.SIGTERM)}
            self._replaced = self._replaced or replaced

    def restore(self) -> None:
        restore_signals(self._replaced)

    def _on_signal(self, signum, _frame) -> None:
        with self._lock:
            self.signum = self.signum or signum
            for proc, cell in self._procs.items():
                self.stopped.append(cell)
                try:
                    os.killpg(proc.pid, signum)
                except ProcessLookupError:
                    pass

    def run(self, cmd: list[str], log_path: str, cell: int = -1) -> Optional[int]:
        """The cell's exit status; None when the sweep was stopped before it started."""
        env = {**os.environ, ENV_PARENT: str(os.getpid())}
        with self._lock:
            if self.signum is not None:
                return None
            log = open(log_path, "w")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            self._procs[proc] = cell
        try:
            return proc.wait()
        finally:
            log.close()
            with self._lock:
                self._procs.pop(proc, None)


def _execute(cmd: list[str], log_path: str, stop: Optional[_Stop] = None,
             cell: int = -1) -> Optional[tuple[int, dict]]:
    """Run one cell's process; (exit status, where it ran: host, and Ray node in a task),
    or None for a cell the sweep's stop kept from starting."""
    import socket

    code = (stop or _Stop()).run(cmd, log_path, cell)
    if code is None:
        return None
    where = {"host": socket.gethostname(), "ray_node": None}
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        where["ray_node"] = sys.modules["ray"].get_runtime_context().get_node_id()
    return code, where


def _finish(cell: Cell, folder: Path, code: int, where: dict) -> dict:
    outcome = {"cell": cell.index, "label": cell.label, "exit_status": code,
               "config": cell.fingerprint, **where}
    if code in FINISHED:
        RunFolder(folder).done.write_text(json.dumps(outcome))
    return outcome


def _run_cells_here(cells: list[Cell], root: Path, parallel: int, on_done,
                    stop: _Stop) -> list[dict]:
    """Every cell as a process on this machine, `parallel` at a time."""

    def run(cell: Cell) -> Optional[dict]:
        if stop.signum is not None:  # stopped: write nothing for the cells not started
            return None
        folder = root / "cells" / cell.folder_name
        cmd = _cell_command(cell, folder, None)
        ran = _execute(cmd, str(folder.parent / f"{folder.name}.log"), stop, cell.index)
        return None if ran is None else _finish(cell, folder, *ran)

    outcomes = []
    with ThreadPoolExecutor(max_workers=max(parallel, 1)) as pool:
        for future in [pool.submit(run, c) for c in cells]:
            outcome = future.result()
            if outcome is not None:
                outcomes.append(outcome)
                on_done()
    return outcomes


def _run_cells_on_ray(cells: list[Cell], root: Path, ray_address: str, parallel: int,
                      on_done, stop: _Stop) -> list[dict]:
    """Every cell as a Ray task on the cluster at `ray_address`, `parallel` at a time. A
    cell's process may land on any node, so OUTPUT_DIR must be a folder every node sees
    (shared storage); the cell's own clients and attacks attach to the same cluster. The
    task reserves no CPU: the cell's clients reserve theirs. On a stop, the running tasks
    are cancelled, which ends their workers and so (parent death) their cells."""
    import ray

    ray.init(address=ray_address, ignore_reinit_error=True, log_to_driver=False)
    stop.install()  # after ray.init, which sets its own SIGTERM handler
    task = ray.remote(num_cpus=0, max_retries=0)(_execute)
    waiting = list(cells)
    running: dict = {}
    outcomes = []
    try:
        while (waiting or running) and stop.signum is None:
            while waiting and len(running) < max(parallel, 1):
                cell = waiting.pop(0)
                folder = root / "cells" / cell.folder_name
                cmd = _cell_command(cell, folder, ray_address)
                ref = task.remote(cmd, str(folder.parent / f"{folder.name}.log"))
                running[ref] = (cell, folder)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            if not ready:
                continue
            cell, folder = running.pop(ready[0])
            try:
                outcomes.append(_finish(cell, folder, *ray.get(ready[0])))
            except ray.exceptions.RayError as err:  # its node died: the cell failed, not all
                outcomes.append({"cell": cell.index, "label": cell.label, "exit_status": -1,
                                 "config": cell.fingerprint, "error": str(err)[:300]})
            on_done()
        for ref, (cell, _folder) in running.items():  # stopped: end the running cells
            stop.stopped.append(cell.index)
            ray.cancel(ref, force=True)
    finally:
        ray.shutdown()
    return outcomes


def _refuse_busy(root: Path, cells: list[Cell]) -> None:
    """Before any cell starts: no process of an earlier sweep still writes a cell folder
    that this one would redo (its cell may outlive it on another node, say)."""
    from fedsim.run_lock import RunFolderBusy, describe, holder

    busy = [(c, h) for c in cells if (h := holder(root / "cells" / c.folder_name))]
    if busy:
        cell, record = busy[0]
        more = f" ({len(busy) - 1} more cell folders likewise)" if len(busy) > 1 else ""
        raise RunFolderBusy(f"sweep: {root / 'cells' / cell.folder_name} is still being "
                            f"written ({describe(record)}), by a cell of an earlier sweep "
                            f"still running{more}: stop it or wait for it to end, then "
                            "start the sweep again")


def run_sweep(path: Path, output_dir: Optional[str] = None, scale: Optional[str] = None,
              parallel: int = 1, ray_address: Optional[str] = None,
              progress: bool = True) -> tuple[Path, list[dict]]:
    """Run every unfinished cell; returns the sweep folder and the outcome of each cell
    run now (finished cells are skipped). A cell folder that a live process still writes
    is refused before any cell starts; a SIGINT or SIGTERM stops the running cells and
    raises `Interrupted` (one line), with no further cell started."""
    from tqdm.auto import tqdm

    name, cells = load_sweep(path, scale)
    root = (Path(output_dir or cells[0].cfg.output_dir) / name).resolve()  # Ray workers'
    # folders differ from the driver's
    (root / "cells").mkdir(parents=True, exist_ok=True)
    pending = [c for c in cells if not c.finished_in(root / "cells" / c.folder_name)]
    _refuse_busy(root, pending)
    (root / "sweep.toml").write_text(Path(path).read_text())
    (root / "cells.json").write_text(json.dumps(
        [{"cell": c.index, "label": c.label, "folder": f"cells/{c.folder_name}"}
         for c in cells], indent=2))
    bar = tqdm(total=len(cells), initial=len(cells) - len(pending), desc=f"sweep {name}",
               unit="cell", disable=not progress)
    stop = _Stop()
    stop.install()
    try:
        if ray_address:
            outcomes = _run_cells_on_ray(pending, root, ray_address, parallel,
                                         lambda: bar.update(1), stop)
        else:
            outcomes = _run_cells_here(pending, root, parallel, lambda: bar.update(1), stop)
    finally:
        stop.restore()
        bar.close()
    if stop.signum is not None:
        done = {o["cell"] for o in outcomes if o["exit_status"] in FINISHED}
        stopped = sorted(set(stop.stopped) - done)
        started = {o["cell"] for o in outcomes} | set(stopped)
        raise Interrupted(stop.signum, (
            f"sweep interrupted ({signal.Signals(stop.signum).name}): "
            + "".join(f"cell {i} ({cells[i].label}) stopped, not marked done; "
                      for i in stopped)
            + f"{len(pending) - len(started)} cells not started; the finished cells are "
            "kept: run the same command to resume"))
    return root, outcomes
