"""Attacks during training: each scheduled capture is inverted by a Ray task as soon as it
is complete on disk, beside the federated rounds, so training is not held up.

A watcher thread in the driver scans the run folder for new captures of the configured
observers and schedule and gathers them: a task is submitted for every `attack.group_size`
captures (unset: GATHER, and the task cuts groups to its memory estimate), or for what has
gathered once the oldest has waited WAIT_S, or when the rounds end, so a run never waits
on a group that cannot fill; the task inverts captures of one problem shape together
(`attacker.groups`). Flower's actor pool claims every
CPU Ray counts, so a task asks instead for one unit of the `fedsim_attack` resource (a
local run creates one unit: one attack at a time beside the rounds; on a cluster, start
each node with `--resources '{"fedsim_attack": N}'` for N attacks there) and for
`simulation.gpus_per_attack` GPUs (so on a GPU machine every attack gets one). A cluster
without that resource cannot host attacks beside the rounds (the actors hold every CPU
until the ServerApp returns, and it waits for the attacks): they run after training
instead, and a warning says so. A task that fails records its error and
the others go on; the ServerApp waits for every attack before it returns, because Flower's
simulation engine shuts Ray down right after it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from fedsim.config import ExperimentConfig

log = logging.getLogger("fedsim")

GATHER = 16     # captures a task holds when attack.group_size is unset
WAIT_S = 5.0    # a partial group is sent once its oldest capture has waited this long


def _attack_task(cfg_toml: str, targets: list, run_dir: str, threads: int) -> list[dict]:
    """One Ray task: a gathered list of captures, grouped by problem shape
    (`lab.orchestration.attacks.attack_grouped`; one at a time if `attack.group_size` is 1)."""
    import tomllib

    import torch

    from fedsim.config import from_dict
    from lab.orchestration.attacks import attack_grouped, attack_one

    torch.set_num_threads(max(threads, 1))
    cfg = from_dict(tomllib.loads(cfg_toml))
    found = [(o, r, c, Path(p)) for o, r, c, p in targets]
    if cfg.attack.one_at_a_time():
        return [attack_one(cfg, *t, Path(run_dir)) for t in found]
    return attack_grouped(cfg, found, Path(run_dir))


def server_app_then(finish):
    """fedsim's ServerApp, followed by `finish()` before it returns: Flower's simulation
    engine shuts Ray down as soon as the ServerApp is done, so the attacks must be waited
    for inside it."""
    from flwr.serverapp import ServerApp

    from server.app import main as server_main

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        try:
            server_main(grid, context)
        finally:
            finish()

    return app


class AttacksDuringTraining:
    """start() after Ray is up, finish() while it is (inside the ServerApp)."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, poll_s: float = 0.5):
        self.cfg, self.run_dir, self.poll_s = cfg, Path(run_dir), poll_s
        self.submitted: dict[tuple, object] = {}   # target key -> its task
        self.pending: list[tuple] = []
        self.pending_since = 0.0
        self.records: list[dict] = []
        self.deferred = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fedsim-attacks", daemon=True)

    def start(self) -> None:
        import ray

        from lab.orchestration.simulation import ATTACK_RESOURCE

        sim = self.cfg.simulation
        if not ray.cluster_resources().get(ATTACK_RESOURCE):
            # Flower's actors hold every CPU until the ServerApp returns, and the ServerApp
            # waits for the attacks: asking for CPUs here would wait forever
            log.warning("the Ray cluster has no %r resource: the attacks run after training "
                        "(start its nodes with --resources '{\"%s\": N}' to run N beside "
                        "the rounds)", ATTACK_RESOURCE, ATTACK_RESOURCE)
            self.deferred = True
            return
        options = {"num_cpus": 0, "resources": {ATTACK_RESOURCE: 1}}
        self._remote = ray.remote(num_gpus=sim.gpus_per_attack, **options)(_attack_task)
        self._toml = self.cfg.to_toml()
        self._thread.start()

    def _scan(self, quiet: bool, final: bool = False) -> None:
        from lab.orchestration.attacks import targets

        for target in targets(self.cfg, self.run_dir, quiet=quiet):
            key = target[:3]
            if key not in self.submitted and key not in {t[:3] for t in self.pending}:
                if not self.pending:
                    self.pending_since = time.monotonic()
                self.pending.append((*key, str(target[3])))
        size = 1 if self.cfg.attack.one_at_a_time() else self.cfg.attack.group_size or GATHER
        while len(self.pending) >= size:
            self._submit(self.pending[:size])
            self.pending = self.pending[size:]
            self.pending_since = time.monotonic()
        if self.pending and (final or time.monotonic() - self.pending_since >= WAIT_S):
            self._submit(self.pending)
            self.pending = []

    def _submit(self, group: list[tuple]) -> None:
        task = self._remote.remote(self._toml, list(group), str(self.run_dir),
                                   int(self.cfg.simulation.cpus_per_attack))
        for target in group:
            self.submitted[target[:3]] = task
        log.info("attack %s on %d captures submitted (%s)", self.cfg.attack.name, len(group),
                 ", ".join(f"{o} r{r} c{c}" for o, r, c, _ in group))

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._scan(quiet=True)
            except Exception as err:  # noqa: BLE001 - the final scan will say it again
                log.warning("attack watcher: %r", err)

    def finish(self) -> list[dict]:
        """Submit what is left, then wait for every attack; returns their records."""
        import ray

        if self.deferred:
            return []
        self._stop.set()
        self._thread.join()
        self._scan(quiet=False, final=True)
        t0 = time.perf_counter()
        tasks = list({id(t): t for t in self.submitted.values()}.values())
        self.records = [row for rows in ray.get(tasks) for row in rows]
        log.info("%d attacks during training finished (%.1f s after the last round)",
                 len(self.records), time.perf_counter() - t0)
        return self.records
