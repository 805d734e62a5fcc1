"""Invert captured updates: the attacker's side of an attack run.

The attack receives the capture and the granted knowledge only; the evaluator
(`lab.evaluator`) loads the originals afterwards and scores and records the result.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from attacker.attacks import ATTACKS
from attacker.problem import Budget
from attacker.target import observe
from fedsim.capture import AGGREGATE, capture_stem, load_capture, round_dir
from fedsim.config import ExperimentConfig
from fedsim.device import resolve_device
from lab.evaluator import record_attack
from fedsim.experiment import experiment_for
from lab.oracle import grant_knowledge
from fedsim.records import append_row

log = logging.getLogger("fedsim")


def budget_from(cfg: ExperimentConfig) -> Budget:
    a = cfg.attack
    return Budget(iterations=a.iterations, lr=a.lr, tv_weight=a.tv_weight,
                  bn_weight=a.bn_weight, restarts=a.restarts, init=a.init,
                  batch_restarts=a.batch_restarts, compile=a.compile, distance=a.distance,
                  signed=a.signed)


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False)

    def update(it: int, loss: float) -> None:
        bar.update(it + 1 - bar.n)
        bar.set_postfix(loss=f"{loss:.4g}")

    return update, bar.close


def attack_capture(cfg: ExperimentConfig, capture_path: Path, run_dir: Path,
                   attack_name: Optional[str] = None, progress: bool = True) -> dict:
    name = attack_name or cfg.attack.name
    cap = load_capture(capture_path)
    device = resolve_device(cfg.device)
    exp = experiment_for(cfg)
    # ---- attacker side: the capture and the granted knowledge, nothing else
    obs = observe(cap, device)
    knowledge = grant_knowledge(cfg.attack.knowledge, exp, cap, obs.model)
    attack = ATTACKS[name](budget_from(cfg))
    update, close = _progress_bar(cfg.attack.iterations,
                                  f"{name} r{cap.round} {capture_stem(cap.observer, cap.partition_id)}",
                                  progress)
    try:
        result = attack.run(obs, knowledge, seed=cfg.seed, progress=update)
    finally:
        close()
    # ---- evaluator side: originals come from the oracle, only now
    return record_attack(cfg, exp, cap, name, knowledge, result, Path(run_dir))


def _targets(cfg: ExperimentConfig, run_dir: Path):
    for rnd in cfg.attack.rounds:
        aggregate = round_dir(run_dir, rnd) / f"{capture_stem('server', AGGREGATE)}.pt"
        if aggregate.is_file():  # secure aggregation: no individual update exists
            log.info("round %d: the server holds only the aggregate (secure aggregation); "
                     "attacking the aggregate instead of clients %s", rnd, cfg.attack.clients)
            yield rnd, AGGREGATE, aggregate
            continue
        for client in cfg.attack.clients:
            path = round_dir(run_dir, rnd) / f"{capture_stem('server', client)}.pt"
            if not path.is_file():
                log.warning("no capture for round %d client %d (capture.rounds?)", rnd, client)
                continue
            yield rnd, client, path


def attack_run(cfg: ExperimentConfig, run_dir: Path, progress: bool = True) -> list[dict]:
    """The configured attacks on a finished run's captures (rounds x clients).

    An attack that raises (out of memory, say) is logged and recorded with its error in
    leakage.jsonl, and the others still run."""
    results = []
    for rnd, client, path in _targets(cfg, run_dir):
        try:
            results.append(attack_capture(cfg, path, run_dir, progress=progress))
        except Exception as err:  # noqa: BLE001 - keep every other result
            log.error("attack %s on round %d client %d failed: %r", cfg.attack.name, rnd,
                      client, err)
            row = {"round": rnd, "partition_id": client, "observer": "server",
                   "attack": cfg.attack.name, "error": repr(err)}
            append_row(Path(run_dir) / "leakage.jsonl", row)
            results.append(row)
    return results
