"""Attacks during training: each scheduled capture is inverted by a Ray task as soon as it
is complete on disk, beside the federated rounds, so training is not held up.

A watcher thread in the driver scans the run folder for new captures of the configured
observers and schedule, and submits one task per capture. Flower's actor pool claims every
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


def _attack_task(cfg_toml: str, target: tuple, run_dir: str, threads: int) -> dict:
    import tomllib

    import torch

    from fedsim.config import from_dict
    from lab.orchestration.attacks import attack_one

    torch.set_num_threads(max(threads, 1))
    observer, rnd, client, path = target
    return attack_one(from_dict(tomllib.loads(cfg_toml)), observer, rnd, client, Path(path),
                      Path(run_dir))


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
        self.submitted: dict[tuple, object] = {}
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

    def _scan(self, quiet: bool) -> None:
        from lab.orchestration.attacks import targets

        for target in targets(self.cfg, self.run_dir, quiet=quiet):
            key = target[:3]
            if key not in self.submitted:
                self.submitted[key] = self._remote.remote(
                    self._toml, (*target[:3], str(target[3])), str(self.run_dir),
                    int(self.cfg.simulation.cpus_per_attack))
                log.info("attack %s by the %s on round %d client %d submitted",
                         self.cfg.attack.name, *key)

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
        self._scan(quiet=False)
        t0 = time.perf_counter()
        self.records = ray.get(list(self.submitted.values()))
        log.info("%d attacks during training finished (%.1f s after the last round)",
                 len(self.records), time.perf_counter() - t0)
        return self.records
