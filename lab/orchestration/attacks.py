"""Invert captured updates: the attacker's side of an attack run.

The attack receives the capture and the granted knowledge only; the evaluator
(`lab.evaluator`) loads the originals afterwards and scores and records the result.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from attacker.attacks import ATTACKS
from attacker.problem import Budget, budget_of
from attacker.target import observe
from fedsim.capture import AGGREGATE, capture_stem, load_capture
from fedsim.config import ExperimentConfig
from fedsim.device import resolve_device
from lab.evaluator import attacks_folder, record_attack, record_oracle
from fedsim.experiment import experiment_for
from lab.oracle import grant_knowledge
from fedsim.records import append_row, disk_full
from fedsim.observers import OBSERVERS
from fedsim.run_folder import RunFolder

log = logging.getLogger("fedsim")


def budget_from(cfg: ExperimentConfig) -> Budget:
    return budget_of(cfg.attack)


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False)

    def update(it: int, loss: float) -> None:
        bar.update(it + 1 - bar.n)
        bar.set_postfix(loss=f"{loss:.4g}")

    return update, bar.close


def prepared(cfg: ExperimentConfig, capture_path: Path, run_dir: Path,
             attack_name: Optional[str] = None):
    """(capture, experiment, observation, knowledge, attack), or the skipped row of an
    update that holds no private example."""
    name = attack_name or cfg.attack.name
    cap = load_capture(capture_path)
    attacks_folder(run_dir)  # where the results go, checked before the work
    device = resolve_device(cfg.device)
    exp = experiment_for(cfg)
    if cap.facts.batch_sizes is not None and not sum(cap.facts.batch_sizes):
        reason = ("the update holds no private example (every Poisson batch was empty: "
                  "noise only); nothing to invert")
        log.info("round %d %s: %s", cap.round, capture_stem(cap.observer, cap.partition_id),
                 reason)
        return {"round": cap.round, "partition_id": cap.partition_id,
                "observer": cap.observer, "attack": name, "skipped": reason}
    # ---- attacker side: the capture and the granted knowledge, nothing else
    obs = observe(cap, device)
    knowledge = grant_knowledge(cfg.attack.knowledge, exp, cap, obs.model)
    return cap, exp, obs, knowledge, ATTACKS[name](budget_from(cfg))


def attack_capture(cfg: ExperimentConfig, capture_path: Path, run_dir: Path,
                   attack_name: Optional[str] = None, progress: bool = True) -> dict:
    name = attack_name or cfg.attack.name
    ready = prepared(cfg, capture_path, run_dir, attack_name)
    if isinstance(ready, dict):
        return ready
    cap, exp, obs, knowledge, attack = ready
    update, close = _progress_bar(cfg.attack.iterations,
                                  f"{name} r{cap.round} {capture_stem(cap.observer, cap.partition_id)}",
                                  progress)
    if cfg.attack.tuning.search != "off":
        close()
        return tuned_attack(cfg, exp, cap, obs, knowledge, attack, Path(run_dir))
    try:
        result = attack.run(obs, knowledge, seed=cfg.seed, progress=update)
    finally:
        close()
    # ---- evaluator side: originals come from the oracle, only now
    return record_attack(cfg, exp, cap, name, knowledge, result, Path(run_dir))


def tuned_attack(cfg: ExperimentConfig, exp, cap, obs, knowledge, attack, run_dir: Path
                 ) -> dict:
    """`attack.tuning`: the attacker's search on one update, its own choice recorded as the
    attack (charged the whole search's time), and with `tuning.oracle` the best candidate by
    true PSNR kept apart, in leakage_oracle.jsonl, as the upper bound it is."""
    from attacker.tuning import best, combined, tune

    t = cfg.attack.tuning
    problem = attack.problem(obs, knowledge)
    stem = capture_stem(cap.observer, cap.partition_id)

    def report(trial):
        log.info("tuning %s r%d %s: %s -> matching loss %.4g", attack.name, cap.round, stem,
                 trial.settings, trial.judged_loss)

    trials = tune(lambda b: type(attack)(b).solve(problem, cfg.seed, None), problem,
                  attack.budget, t.search, t.space, t.trials, cfg.seed, report)
    for trial in trials:
        trial.result = attack.finish(obs, trial.result)
    choice = best(trials)
    searched = {"search": t.search, "trials": len(trials),
                "space": {k: list(v) for k, v in t.space.items()}}
    # ---- evaluator side: originals come from the oracle, only now
    row = record_attack(cfg, exp, cap, attack.name, knowledge, combined(choice, trials),
                        run_dir, fields={"tuning": {**searched, "chosen": choice.settings,
                                                    "chosen_by": "gradient-matching loss",
                                                    "judged_loss": choice.judged_loss}})
    if t.oracle:
        record_oracle(cfg, exp, cap, attack.name, knowledge, trials, run_dir, searched)
    return row


def targets(cfg: ExperimentConfig, run_dir: Path, rounds=None, quiet: bool = False):
    """(observer, round, client, capture path) of every scheduled attack whose capture
    exists, for every configured observer. Under secure aggregation the server and the
    eavesdropper have no individual update: the server's aggregate is attacked instead, and
    the eavesdropper's masked shares are reported, not inverted."""
    a, fed = cfg.attack, cfg.federation
    rounds = a.scheduled_rounds(fed.num_rounds) if rounds is None else rounds
    clients = a.scheduled_clients(fed.num_clients)
    run = RunFolder(run_dir)
    missing: list[tuple] = []
    for observer in a.observers:
        for rnd in rounds:
            if OBSERVERS[observer].sees == "aggregate":
                path = run.capture(rnd, observer, AGGREGATE)
                if path.is_file() and path.with_suffix(".json").is_file():
                    yield observer, rnd, AGGREGATE, path
                elif rnd == fed.num_rounds and not quiet:
                    log.info("round %d: a client never receives the last global model; "
                             "the %s observer has nothing to attack", rnd, observer)
                continue
            aggregate = run.capture(rnd, observer, AGGREGATE)
            if aggregate.is_file():  # secure aggregation: no individual update exists
                if not quiet:
                    log.info("round %d: the %s holds only the aggregate (secure "
                             "aggregation)", rnd, observer)
                yield observer, rnd, AGGREGATE, aggregate
                continue
            for client in clients:
                path = run.capture(rnd, observer, client)
                if path.is_file() and path.with_suffix(".json").is_file():
                    yield observer, rnd, client, path
                elif quiet:
                    continue
                elif path.with_suffix(".json").is_file():
                    log.info("round %d client %d: the %s saw masked SecAgg+ shares only; "
                             "nothing to invert", rnd, client, observer)
                else:
                    missing.append((observer, rnd, client))
    _report_missing(missing, sampled=fed.clients_per_round not in (None, fed.num_clients))


MISSING_SHOWN = 5  # missing captures named one by one; the rest are counted


def _report_missing(missing: list[tuple], sampled: bool) -> None:
    """Scheduled attacks without a capture, in a few lines however many there are (a
    100-client federation sampling 10 a round has 90 per round, expected)."""
    if not missing:
        return
    if sampled:
        log.info("%d scheduled (observer, round, client) have no capture: clients not "
                 "sampled in that round (federation.clients_per_round)", len(missing))
        return
    for observer, rnd, client in missing[:MISSING_SHOWN]:
        log.warning("no %s capture for round %d client %d (capture.rounds?)",
                    observer, rnd, client)
    if len(missing) > MISSING_SHOWN:
        log.warning("... and %d more scheduled attacks without a capture",
                    len(missing) - MISSING_SHOWN)


def attack_one(cfg: ExperimentConfig, observer: str, rnd: int, client: int, path: Path,
               run_dir: Path, progress: bool = False) -> dict:
    """One attack, recorded; one that raises (out of memory, say) is logged and recorded
    with its error in leakage.jsonl instead, so every other result still lands. A full
    disk is no attack's failure: it raises `DiskFull`, which stops the run."""
    try:
        return attack_capture(cfg, path, run_dir, progress=progress)
    except Exception as err:  # noqa: BLE001 - keep every other result
        return _failed(cfg, (observer, rnd, client, path), err, run_dir)


def attack_run(cfg: ExperimentConfig, run_dir: Path, progress: bool = True) -> list[dict]:
    """The configured attacks on a finished run's captures: one after another with
    `attack.group_size = 1`, else grouped (`attack_grouped`)."""
    found = list(targets(cfg, run_dir))
    if cfg.attack.one_at_a_time():
        return [attack_one(cfg, *target, run_dir, progress=progress) for target in found]
    return attack_grouped(cfg, found, run_dir)


def attack_grouped(cfg: ExperimentConfig, found: list, run_dir: Path) -> list[dict]:
    """Captures of one problem shape (`attacker.groups.shape_key`) inverted together, at
    most `attack.group_size` (unset: `default_group_size`) at a time, each from the run's
    seed as alone; a group out of memory is split and retried (logged). Each result is
    recorded as a single attack's; a capture that fails to load or to record is that
    attack's error row (`attack_one`), the others go on."""
    from attacker.groups import default_group_size, invert_split, shape_key

    rows, ready, shapes = [], [], {}
    for target in found:
        try:
            item = prepared(cfg, target[3], run_dir)
        except Exception as err:  # noqa: BLE001 - recorded like a single attack's failure
            rows.append(_failed(cfg, target, err, run_dir))
            continue
        if isinstance(item, dict):
            rows.append(item)
            continue
        cap, exp, obs, knowledge, attack = item
        problem = attack.problem(obs, knowledge)
        ready.append((target, item, problem))
        shapes.setdefault(shape_key(problem), []).append(len(ready) - 1)
    for members in shapes.values():
        first = ready[members[0]]
        size = cfg.attack.group_size or default_group_size(first[2], first[1][4].budget)
        for start in range(0, len(members), size):
            chunk = [ready[i] for i in members[start:start + size]]
            log.info("attacking %d captures as one group (%s)", len(chunk),
                     ", ".join(f"r{t[1]} c{t[2]}" for t, _, _ in chunk))

            def solve(items):  # one alone takes the single-attack path
                attack, problems = items[0][1][4], [p for _, _, p in items]
                if len(problems) == 1:
                    return [attack.solve(problems[0], cfg.seed, None)]
                return attack.solve_group(problems, [cfg.seed] * len(problems))
            try:
                results = invert_split(solve, chunk)
            except Exception as err:  # noqa: BLE001 - each member's error row, as alone
                rows += [_failed(cfg, t, err, run_dir) for t, _, _ in chunk]
                continue
            for (target, (cap, exp, obs, knowledge, attack), _), result in zip(chunk, results):
                try:
                    rows.append(record_attack(cfg, exp, cap, attack.name, knowledge,
                                              attack.finish(obs, result), Path(run_dir)))
                except Exception as err:  # noqa: BLE001 - as attack_one
                    rows.append(_failed(cfg, target, err, run_dir))
    return rows


def _failed(cfg, target, err, run_dir) -> dict:
    full = disk_full(err, run_dir)
    if full is not None:
        raise full from None
    observer, rnd, client, _ = target
    log.error("attack %s by the %s on round %d client %d failed: %r", cfg.attack.name,
              observer, rnd, client, err)
    row = {"round": rnd, "partition_id": client, "observer": observer,
           "attack": cfg.attack.name, "error": repr(err)}
    append_row(RunFolder(run_dir).leakage, row)
    return row
