"""The attacker's own search over its settings (attack.tuning): it keeps the candidate with
the lowest matching loss, never looks at the private images, and the oracle-tuned upper
bound is kept in a file of its own."""

import dataclasses
import json

import pytest
import torch

from attacker.adam import invert_adam
from attacker.problem import Budget, InversionProblem
from attacker.tuning import best, grid_points, judged_loss, tune
from clients.training import batch_gradient
from fedsim.capture import save_capture
from fedsim.config import ConfigError
from fedsim.experiment import experiment_for
from fedsim.metrics import score_reconstruction
from fedsim.run_folder import RunFolder
from lab.orchestration.attacks import attack_run
from lab.orchestration.inprocess import local_capture
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    exp = experiment_for(tiny_config(tmp_path_factory.mktemp("tuning")))
    ds = exp.dataset
    x, y = ds.x_train[:1], ds.y_train[:1]
    model = exp.new_model()
    g, _, _ = batch_gradient(model, x, y)
    return InversionProblem(model, g, 1, ds.image_shape, ds.num_classes, labels=y,
                            input_mean=ds.mean, input_std=ds.std), x


def _budget(**kw):
    return Budget(**{"iterations": 40, "lr": 0.1, "tv_weight": 0.0, "compile": "eager",
                     "distance": "cosine", "signed": True, **kw})


def test_the_judged_loss_is_the_attacks_own_matching_loss_without_priors(problem):
    prob, _ = problem
    result = invert_adam(prob, _budget(tv_weight=0.05), seed=0)
    judged = judged_loss(prob, result, _budget())
    # the attack's match loss is of its images before the clamp to the box: equal to rounding
    assert judged == pytest.approx(result.match_loss, rel=1e-3, abs=1e-5)
    far = judged_loss(prob, dataclasses.replace(result, images=torch.rand_like(result.images)),
                      _budget())
    assert far > judged


def test_a_grid_keeps_the_lowest_matching_loss_and_it_leaks_more(problem):
    prob, x = problem
    space = {"lr": [1e-4, 0.1]}  # a learning rate too small to move is the bad candidate
    trials = tune(lambda b: invert_adam(prob, b, seed=0), prob, _budget(), "grid", space,
                  trials=8, seed=0)
    assert [t.settings for t in trials] == [{"lr": 1e-4}, {"lr": 0.1}]
    choice = best(trials)
    assert choice.judged_loss == min(t.judged_loss for t in trials)
    assert choice.settings == {"lr": 0.1}
    psnr = {t.settings["lr"]: score_reconstruction(x, t.result.images)["psnr"] for t in trials}
    assert psnr[0.1] > psnr[1e-4] + 3


def test_grid_points_draw_trials_from_the_seed_when_the_grid_is_larger():
    space = {"lr": [0.01, 0.1, 1.0], "tv_weight": [0.0, 0.1]}
    assert len(grid_points(space, 8, 0)) == 6
    drawn = grid_points(space, 3, 0)
    assert len(drawn) == 3 and drawn == grid_points(space, 3, 0)
    assert len({tuple(p.values()) for p in drawn}) == 3


def test_tpe_runs_its_trials_and_repeats_from_the_seed(problem):
    prob, _ = problem
    space = {"lr": [1e-4, 0.03, 0.1], "tv_weight": [0.0, 0.01]}
    runs = [tune(lambda b: invert_adam(prob, b.model_copy(update={"iterations": 8}), seed=0),
                 prob, _budget(), "tpe", space, trials=4, seed=s) for s in (3, 3)]
    assert [len(r) for r in runs] == [4, 4]
    assert [t.settings for t in runs[0]] == [t.settings for t in runs[1]]
    assert all(set(t.settings) == {"lr", "tv_weight"} for t in runs[0])


def test_bad_tuning_settings_are_refused_naming_the_field(tmp_path):
    for space, field in (({"lr": [-1.0]}, "attack.tuning.space.lr"),
                         ({"depth": [1]}, "attack.tuning.space key 'depth'"),
                         ({"init": ["noise"]}, "attack.tuning.space.init 'noise'"),
                         ({"distance": ["l3"]}, "attack.tuning.space.distance 'l3'")):
        with pytest.raises((ConfigError, ValueError), match=field):
            tiny_config(tmp_path, attack={"tuning": {"search": "grid", "space": space}})


def test_a_tuned_run_records_the_attackers_choice_and_the_oracle_apart(tmp_path):
    cfg = tiny_config(tmp_path, federation={"algorithm": "fedsgd", "batch_size": 1,
                                            "num_clients": 2},
                      attack={"enabled": True, "when": "after", "iterations": 30,
                              "tv_weight": 0.0, "rounds": [1], "clients": [0, 1],
                              "compile": "eager", "knowledge": {"labels": "known"},
                              "tuning": {"search": "grid",
                                         "space": {"lr": [1e-4, 0.1], "init": ["randn",
                                                                               "zeros"]}}})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(cfg.to_toml())
    for pid in range(2):
        save_capture(run_dir, local_capture(cfg, 1, pid))
    rows = attack_run(cfg, run_dir, progress=False)
    run = RunFolder(run_dir)
    mine = [json.loads(x) for x in run.leakage.read_text().splitlines()]
    oracle = [json.loads(x) for x in run.oracle_leakage.read_text().splitlines()]
    assert len(rows) == len(mine) == len(oracle) == 2
    assert all(r["attack"] == "inverting_gradients" for r in mine)
    assert all(r["attack"] == "inverting_gradients_oracle_tuned" for r in oracle)
    for own, upper in zip(sorted(mine, key=lambda r: r["partition_id"]),
                          sorted(oracle, key=lambda r: r["partition_id"])):
        assert own["tuning"]["trials"] == 4 and own["tuning"]["chosen"]["lr"] == 0.1
        assert own["tuning"]["chosen_by"] == "gradient-matching loss"
        assert "oracle" in upper["tuning"]["chosen_by"]
        assert upper["psnr"] == pytest.approx(max(upper["tuning"]["trial_psnr"]), abs=1e-6)
        assert upper["psnr"] >= own["psnr"] - 1e-6
        # the search's time is charged to the attack: four attacks' worth
        # both are charged the whole search's time, not one candidate's
        assert own["seconds"] == pytest.approx(upper["seconds"])
    # the report shows the upper bound in its own section, never in the leakage tables
    from lab.report import build_report

    build_report(run_dir)
    report = run.report_md.read_text()
    own_part, _, oracle_part = report.partition("## Oracle-tuned upper bound")
    assert oracle_part and "inverting_gradients_oracle_tuned" in oracle_part
    assert "oracle_tuned" not in own_part
