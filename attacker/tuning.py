"""The attacker's own search over its settings (`attack.tuning`): every candidate is a
full attack on the same problem, from the same seed, and the attacker keeps the one whose
reconstruction best explains the observed update: the lowest gradient-matching loss under
the attack's own distance, without priors, for the images and hard labels it reports. The
private images are never consulted here (the evaluator's oracle pick lives in `lab`).

A grid walks every point of the space (a seeded draw of `trials` of them when it is
larger); TPE (Optuna's sampler, as LeakPro tunes its attacks) proposes `trials` points,
each informed by the matching losses so far."""

from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass
from typing import Callable

import torch

from attacker.objective import make_objective
from attacker.problem import Budget, InversionProblem, InversionResult


@dataclass
class Trial:
    settings: dict            # the budget fields this candidate changed
    result: InversionResult
    judged_loss: float        # gradient distance of the reported images and labels


def judged_loss(problem: InversionProblem, result: InversionResult, budget: Budget) -> float:
    """What the attacker compares candidates by: the gradient distance (`budget.distance`,
    no image priors) of the images and labels a candidate reports (hard labels, or the soft
    ones it found against a declared mix; fixed labels stay). One yardstick for every
    candidate, whatever distance or priors it optimised."""
    device = next(problem.model.parameters()).device
    labels = problem.labels if problem.labels is not None else (
        result.label_probs if problem.soft_labels else result.labels)
    judged = dataclasses.replace(problem, labels=labels.to(device))
    plain = budget.model_copy(update={"tv_weight": 0.0, "bn_weight": 0.0})
    with torch.enable_grad():
        _, match = make_objective(judged, plain, pixels=True)(result.images.to(device), None)
    value = float(match.detach())
    return value if value == value else float("inf")  # NaN never wins


def grid_points(space: dict[str, list], trials: int, seed: int) -> list[dict]:
    """Every point of the space in order, or `trials` of them drawn from `seed`."""
    names = list(space)
    points = [dict(zip(names, values)) for values in itertools.product(*space.values())]
    if len(points) > trials:
        points = random.Random(seed).sample(points, trials)
    return points


def tune(solve: Callable[[Budget], InversionResult], problem: InversionProblem,
         budget: Budget, search: str, space: dict[str, list], trials: int, seed: int,
         report: Callable[[Trial], None] = lambda t: None) -> list[Trial]:
    """Every candidate's trial, in the order run; `solve(budget)` runs one attack.
    The attacker's choice is `best(trials)`."""
    def run(settings: dict) -> Trial:
        candidate = Budget.model_validate({**budget.model_dump(), **settings})
        result = solve(candidate)
        trial = Trial(settings, result, judged_loss(problem, result, budget))
        report(trial)
        return trial

    if search == "grid":
        return [run(p) for p in grid_points(space, trials, seed)]
    if search == "tpe":
        return _tpe(run, space, trials, seed)
    raise ValueError(f"attack.tuning.search {search!r} is not one of ['grid', 'tpe']")


def _tpe(run: Callable[[dict], Trial], space: dict[str, list], trials: int, seed: int
         ) -> list[Trial]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    done: list[Trial] = []

    def objective(t: "optuna.Trial") -> float:
        # categorical over the listed values, by index (Optuna keeps choices' types apart)
        settings = {name: values[t.suggest_categorical(name, list(range(len(values))))]
                    for name, values in space.items()}
        done.append(run(settings))
        return done[-1].judged_loss

    study.optimize(objective, n_trials=trials)
    return done


def best(trials: list[Trial]) -> Trial:
    """The attacker's choice: the lowest judged loss (the first of equals)."""
    return min(trials, key=lambda t: t.judged_loss)


def combined(choice: Trial, trials: list[Trial]) -> InversionResult:
    """The chosen trial's result, charged the time of the whole search (so the cost table's
    seconds per step carry the search's factor)."""
    return dataclasses.replace(choice.result, seconds=sum(t.result.seconds for t in trials))
