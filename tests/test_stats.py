"""Figures with their n and interval: the bootstrap covers as it should, replicates are
grouped, a paired difference is what a hand computation gives, and "within noise" follows
the interval; every attack is scored against trivial baselines."""

import json

import numpy as np
import pytest
import torch

from fedsim.metrics import score_reconstruction
from fedsim.metrics.baselines import BASELINES, baseline_scores, margins
from fedsim.metrics import HIGHER_LEAKS
from lab.stats import MIN_N, Comparison, compare, summarize, updates_needed


@pytest.mark.parametrize("draw, true_mean", [
    (lambda rng, n: rng.normal(14.0, 2.5, n), 14.0),
    (lambda rng, n: rng.exponential(2.0, n), 2.0),  # skewed: BCa's reason to exist
])
def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time(draw, true_mean):
    """400 synthetic samples of 30 values each; the share of intervals that contain the
    true mean must lie in [0.91, 0.98] (binomial sd at 0.95 and 400 draws: 0.011)."""
    rng = np.random.default_rng(123)
    draws = 400
    covered = 0
    for _ in range(draws):
        s = summarize(draw(rng, 30))
        covered += s.low <= true_mean <= s.high
    assert 0.91 <= covered / draws <= 0.98, covered / draws


def test_summary_has_mean_n_worst_and_no_interval_below_min_n():
    s = summarize([10.0, 12.0, None, 11.0, 15.0, 13.0])
    assert s.n == 5 and s.mean == pytest.approx(12.2) and s.worst == 15.0
    assert s.low < 12.2 < s.high
    assert summarize([3.0, 1.0, 2.0], higher_leaks=False).worst == 1.0
    few = summarize([1.0] * (MIN_N - 1) + [2.0])
    assert few.low is not None
    fewer = summarize([1.0, 2.0, 3.0])
    assert fewer.low is None and fewer.high is None and "n=3" in fewer.text()
    assert summarize([]).n == 0 and summarize([]).text() == "-"


def test_paired_difference_matches_a_hand_computation():
    cell = {("s0", 1, 0): 12.0, ("s0", 1, 1): 14.0, ("s0", 2, 0): 11.0, ("s0", 2, 1): 13.5,
            ("s0", 3, 0): 10.0, ("s0", 3, 1): 16.0, ("s0", 4, 0): 9.0}   # last has no pair
    base = {("s0", 1, 0): 13.0, ("s0", 1, 1): 15.5, ("s0", 2, 0): 11.5, ("s0", 2, 1): 14.0,
            ("s0", 3, 0): 11.0, ("s0", 3, 1): 16.5}
    by_hand = np.mean([12 - 13, 14 - 15.5, 11 - 11.5, 13.5 - 14, 10 - 11, 16 - 16.5])
    c = compare(cell, base)
    assert c.paired and c.n == 6
    assert c.difference == pytest.approx(by_hand)  # -0.833
    assert c.high < 0 and c.verdict() == "lower" and c.within_noise is False
    # unpaired, the same numbers cannot tell the two apart: the batches' spread dominates
    unpaired = compare({("a", k): v for k, v in enumerate(cell.values())},
                       {("b", k): v for k, v in enumerate(base.values())})
    assert not unpaired.paired and unpaired.within_noise is True


def test_within_noise_flips_when_the_interval_crosses_zero():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, 24)
    base = {k: 10.0 for k in range(24)}
    shifted = [compare({k: 10.0 + shift + noise[k] for k in base}, base)
               for shift in (0.0, 0.2, 1.5)]
    assert shifted[0].within_noise and shifted[0].verdict() == "within noise"
    assert shifted[2].within_noise is False and shifted[2].verdict() == "higher"
    for c in shifted:  # the verdict is the interval's: 0 inside it or not
        assert c.within_noise == (c.low <= 0 <= c.high)
    assert Comparison.from_row(shifted[2].as_row("psnr"), "psnr") == shifted[2]


def test_updates_needed_for_a_1_db_paired_difference():
    assert updates_needed(2.0, 1.0) == 16  # (1.96 * 2 / 1)^2 = 15.4
    assert updates_needed(0.1, 1.0) == 2


def test_attack_is_scored_against_trivial_baselines():
    torch.manual_seed(0)
    originals = torch.rand(4, 3, 8, 8)
    mean_image = torch.full((3, 8, 8), 0.5)

    def score(guess):
        return score_reconstruction(originals, guess)

    base = baseline_scores(originals, mean_image, score)
    assert set(base) == set(BASELINES)
    # the batch's mean colour, as one constant image, is what a blind guess reaches
    colour = originals.mean(dim=(0, 2, 3), keepdim=True).expand_as(originals)
    assert base["batch_colour"]["psnr"] == pytest.approx(score(colour)["psnr"])
    exact = score(originals.flip(0))  # the right images, in another order
    m = margins(exact, base, HIGHER_LEAKS)
    assert m["margin_psnr"] > 50 and m["margin_rmse"] > 0
    blind = score(colour + 0.01)
    assert margins(blind, base, HIGHER_LEAKS)["margin_psnr"] < 0
    assert "dataset_mean" not in baseline_scores(originals, None, score)  # foreign capture


def _fake_cell(root, index, label, seed, psnrs, accuracy, defenses="none"):
    folder = root / "cells" / f"{index:02d}-c"
    folder.mkdir(parents=True)
    (root / "cells" / f"{index:02d}-c.toml").write_text(
        f'name = "s-{index:02d}"\nseed = {seed}\n[federation]\nnum_rounds = 2\n'
        f'[data]\nname = "{defenses}"\n')
    (folder / "done.json").write_text("{}")
    rows = [{"round": 1 + k // 2, "partition_id": k % 2, "observer": "server", "psnr": p,
             "ssim": 0.5, "margin_psnr": p - 10, "beats_baseline": p > 10}
            for k, p in enumerate(psnrs)]
    (folder / "leakage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metrics.jsonl").write_text(json.dumps({"round": 2, "global_accuracy": accuracy})
                                          + "\n")
    return {"cell": index, "label": label, "folder": f"cells/{index:02d}-c"}


def test_replicates_are_grouped_and_compared_with_the_baseline_setting(tmp_path):
    from lab.sweep_stats import sweep_table

    cells = [_fake_cell(tmp_path, 0, "none, seed=0", 0, [14, 15, 13, 16], 0.90),
             _fake_cell(tmp_path, 1, "none, seed=1", 1, [15, 14, 12, 17], 0.92),
             _fake_cell(tmp_path, 2, "prune, seed=0", 0, [12, 13, 11, 14], 0.89, "d"),
             _fake_cell(tmp_path, 3, "prune, seed=1", 1, [13, 12, 10, 15], 0.91, "d")]
    (tmp_path / "cells.json").write_text(json.dumps(cells))
    rows = sweep_table(tmp_path)
    assert [r["label"] for r in rows] == ["none", "prune"]
    none, prune = rows
    assert none["baseline"] and none["replicates"] == 2 and none["attacks"] == 8
    assert none["psnr_n"] == 8 and none["psnr_mean"] == pytest.approx(14.5)
    assert none["global_accuracy_n"] == 2 and none["global_accuracy_mean"] == pytest.approx(0.91)
    # the same (seed, round, client) in both settings: 8 pairs, each 2 dB lower
    assert prune["psnr_diff_n"] == 8 and prune["psnr_diff_paired"]
    assert prune["psnr_diff"] == pytest.approx(-2.0)
    assert prune["psnr_verdict"] == "lower"
    assert prune["accuracy_diff"] == pytest.approx(-0.01)


def test_a_tuned_settings_oracle_bound_has_its_own_column(tmp_path):
    """The oracle-tuned rows (leakage_oracle.jsonl) fill `oracle_psnr` only: the setting's
    figures and its comparison stay the attacker's own choice."""
    from lab.report import _text_row
    from lab.sweep_stats import sweep_table

    cells = [_fake_cell(tmp_path, 0, "none", 0, [14, 15, 13, 16], 0.90),
             _fake_cell(tmp_path, 1, "none, tuned", 0, [15, 16, 14, 17], 0.90, "t")]
    oracle = [{"round": 1 + k // 2, "partition_id": k % 2, "observer": "server", "psnr": p}
              for k, p in enumerate([18, 19, 17, 20])]
    (tmp_path / "cells" / "01-c" / "leakage_oracle.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in oracle))
    (tmp_path / "cells.json").write_text(json.dumps(cells))
    none, tuned = sweep_table(tmp_path)
    assert none["oracle_psnr_n"] == 0 and _text_row(none)["oracle_psnr"] == "-"
    assert tuned["oracle_psnr_mean"] == pytest.approx(18.5) and tuned["oracle_psnr_n"] == 4
    assert tuned["psnr_mean"] == pytest.approx(15.5) and tuned["psnr_diff"] == pytest.approx(1.0)


def test_accuracy_is_compared_in_a_sweep_that_attacks_nothing(tmp_path):
    from lab.sweep_stats import sweep_table

    cells = [_fake_cell(tmp_path, k, f"{lab}, seed={s}", s, [], acc, lab)
             for k, (lab, s, acc) in enumerate([("none", 0, 0.60), ("none", 1, 0.62),
                                                 ("dp", 0, 0.10), ("dp", 1, 0.14)])]
    (tmp_path / "cells.json").write_text(json.dumps(cells))
    none, dp = sweep_table(tmp_path)
    assert none["attacks"] == 0 and dp["observer"] is None
    assert dp["accuracy_diff"] == pytest.approx(-0.49) and dp["accuracy_diff_n"] == 2


def test_a_cell_folder_outside_the_sweep_is_refused(tmp_path):
    from fedsim.run_files import RunFileError
    from lab.sweep_stats import sweep_table

    (tmp_path / "cells.json").write_text(json.dumps(
        [{"cell": 0, "label": "x", "folder": "../../etc"}]))
    with pytest.raises(RunFileError, match="leaves"):
        sweep_table(tmp_path)
