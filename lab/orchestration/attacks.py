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
    return budget_of(cfg.attack)


def budget_of(a) -> Budget:
    """The optimiser's budget from an `[attack]` section."""
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


def targets(cfg: ExperimentConfig, run_dir: Path, rounds=None, quiet: bool = False):
    """(observer, round, client, capture path) of every scheduled attack whose capture
    exists, for every configured observer. Under secure aggregation the server and the
    eavesdropper have no individual update: the server's aggregate is attacked instead, and
    the eavesdropper's masked shares are reported, not inverted."""
    a, fed = cfg.attack, cfg.federation
    rounds = a.scheduled_rounds(fed.num_rounds) if rounds is None else rounds
    clients = a.scheduled_clients(fed.num_clients)
    for observer in a.observers:
        for rnd in rounds:
            folder = round_dir(run_dir, rnd)
            if observer == "client":
                path = folder / f"{capture_stem('client', AGGREGATE)}.pt"
                if path.is_file() and path.with_suffix(".json").is_file():
                    yield observer, rnd, AGGREGATE, path
                elif rnd == fed.num_rounds and not quiet:
                    log.info("round %d: a client never receives the last global model; "
                             "the client observer has nothing to attack", rnd)
                continue
            aggregate = folder / f"{capture_stem(observer, AGGREGATE)}.pt"
            if aggregate.is_file():  # secure aggregation: no individual update exists
                if not quiet:
                    log.info("round %d: the %s holds only the aggregate (secure "
                             "aggregation)", rnd, observer)
                yield observer, rnd, AGGREGATE, aggregate
                continue
            for client in clients:
                path = folder / f"{capture_stem(observer, client)}.pt"
                if path.is_file() and path.with_suffix(".json").is_file():
                    yield observer, rnd, client, path
                elif quiet:
                    continue
                elif path.with_suffix(".json").is_file():
                    log.info("round %d client %d: the %s saw masked SecAgg+ shares only; "
                             "nothing to invert", rnd, client, observer)
                else:
                    log.warning("no %s capture for round %d client %d (capture.rounds?)",
                                observer, rnd, client)


def attack_one(cfg: ExperimentConfig, observer: str, rnd: int, client: int, path: Path,
               run_dir: Path, progress: bool = False) -> dict:
    """One attack, recorded; one that raises (out of memory, say) is logged and recorded
    with its error in leakage.jsonl instead, so every other result still lands."""
    try:
        return attack_capture(cfg, path, run_dir, progress=progress)
    except Exception as err:  # noqa: BLE001 - keep every other result
        log.error("attack %s by the %s on round %d client %d failed: %r", cfg.attack.name,
                  observer, rnd, client, err)
        row = {"round": rnd, "partition_id": client, "observer": observer,
               "attack": cfg.attack.name, "error": repr(err)}
        append_row(Path(run_dir) / "leakage.jsonl", row)
        return row


def attack_run(cfg: ExperimentConfig, run_dir: Path, progress: bool = True) -> list[dict]:
    """The configured attacks on a finished run's captures, one after another."""
    return [attack_one(cfg, *target, run_dir, progress=progress)
            for target in targets(cfg, run_dir)]
