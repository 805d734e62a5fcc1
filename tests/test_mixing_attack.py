"""The attack against a declared mix (MixUp, Intra-InstaHide): its model of the update is
exact at the true mixes, the `sources` model contains that point, restored labels stay
soft, and the attacker's yardstick judges soft labels as soft."""

import dataclasses

import pytest
import torch

from attacker.attacks import ATTACKS
from attacker.knowledge import Knowledge
from attacker.mixing import mixed
from attacker.objective import make_objective
from attacker.problem import Budget
from attacker.target import observe
from attacker.tuning import judged_loss
from clients.defenses import build_defenses
from clients.defenses.mixing import MixParams, expected_coefficients
from clients.local import training_batches
from fedsim.experiment import experiment_for
from fedsim.metrics import score_reconstruction
from lab.oracle import private_batch
from lab.orchestration.inprocess import local_capture
from tests.helpers import tiny_config


@pytest.fixture(scope="module", params=["mixup", "instahide"])
def mixed_run(request, tmp_path_factory):
    """A FedSGD update of 3 digits trained as mixes of k = 2: config, capture, the true
    training inputs (the mixes) and their soft labels, the originals."""
    cfg = tiny_config(tmp_path_factory.mktemp("mix"),
                      federation={"algorithm": "fedsgd", "batch_size": 3},
                      defenses=[{"name": request.param, "params": {"k": 2, "cap": 0.8}}])
    cap = local_capture(cfg)
    exp = experiment_for(cfg)
    (xm, ym), = [b for b in training_batches(exp, cap.round, cap.partition_id,
                                             build_defenses(cfg), torch.device("cpu"))]
    return cfg, cap, xm, ym, private_batch(exp, cap)


def test_the_defenses_declare_their_mean_sorted_coefficients():
    c = expected_coefficients(MixParams())
    assert len(c) == 4 and c == sorted(c, reverse=True)
    assert abs(sum(c) - 1) < 1e-6 and 0.25 < c[0] <= 0.65
    assert c == expected_coefficients(MixParams())  # a public function of the parameters
    two = expected_coefficients(MixParams(k=2, cap=0.8))
    assert 0.5 < two[0] <= 0.8


def test_the_mixes_model_is_exact_at_the_true_mixes(mixed_run):
    cfg, cap, xm, ym, _ = mixed_run
    obs = observe(cap)
    assert obs.facts.effects["mix_k"] == 2 and len(obs.facts.effects["mix_coefficients"]) == 2
    attack = ATTACKS["inverting_gradients"](Budget(tv_weight=0.0))
    prob = attack.problem(obs, Knowledge(labels_mode="known", labels=ym, batch_size=3))
    assert prob.mix is None and prob.dummies == 3 and prob.soft_labels
    _, match = make_objective(prob, attack.budget, pixels=True)(xm, None)
    assert abs(float(match)) < 1e-4
    _, wrong = make_objective(prob, attack.budget, pixels=True)(xm.flip(0), None)
    assert float(wrong) > 1e-3  # other inputs do not explain it


def test_the_sources_model_holds_the_true_mixes_and_pairs_among_its_sources(mixed_run):
    cfg, cap, xm, ym, (x, y) = mixed_run
    obs = observe(cap)
    attack = ATTACKS["inverting_gradients"](Budget(tv_weight=0.0, mixing="sources",
                                                   iterations=5))
    prob = attack.problem(obs, Knowledge(labels_mode="known", labels=ym, batch_size=3))
    c = torch.tensor(prob.mix)
    assert prob.dummies == 6 and len(prob.mix) == 2
    # sources that are each mix repeated k times mix back to it (the coefficients sum to 1)
    sources = xm.repeat_interleave(2, dim=0)
    assert torch.allclose(mixed(sources, c), xm, atol=1e-6)
    _, match = make_objective(prob, attack.budget, pixels=True)(sources, None)
    assert abs(float(match)) < 1e-4
    result = attack.solve(prob, 0, None)
    assert result.images.shape[0] == 6 and len(result.labels) == 3
    scores = score_reconstruction(x, result.images, y, result.labels)
    assert len(set(scores["pairing"])) == 3 and max(scores["pairing"]) < 6


def test_restored_labels_under_a_mix_are_optimised_soft_and_judged_soft(mixed_run):
    cfg, cap, xm, ym, _ = mixed_run
    obs = observe(cap)
    attack = ATTACKS["inverting_gradients"](Budget(tv_weight=0.0, iterations=5))
    prob = attack.problem(obs, Knowledge(labels_mode="restored", batch_size=3))
    assert prob.labels is None and prob.soft_labels  # hard restoration assumes one-hot
    result = attack.solve(prob, 0, None)
    assert result.label_probs.shape == (3, 10)
    # the yardstick at the true mixes: ~0 with the true soft labels, not with their argmax
    soft = dataclasses.replace(result, images=xm, label_probs=ym)
    assert judged_loss(prob, soft, attack.budget) < 1e-4
    hard = dataclasses.replace(result, images=xm,
                               label_probs=torch.nn.functional.one_hot(ym.argmax(-1), 10).float())
    assert judged_loss(prob, hard, attack.budget) > 1e-3


def test_an_attack_on_the_mixes_recovers_them(tmp_path):
    """A real outcome: one MixUp input (k = 2) of a digit, inverted with its granted soft
    label, comes back far closer to the true mix than the mean image does."""
    from fedsim.metrics import psnr

    cfg = tiny_config(tmp_path, federation={"algorithm": "fedsgd", "batch_size": 1},
                      defenses=[{"name": "mixup", "params": {"k": 2, "cap": 0.8}}])
    cap = local_capture(cfg)
    exp = experiment_for(cfg)
    (xm, ym), = training_batches(exp, cap.round, cap.partition_id, build_defenses(cfg),
                                 torch.device("cpu"))
    attack = ATTACKS["inverting_gradients"](Budget(iterations=300, lr=0.1, tv_weight=0.0,
                                                   signed=True))
    result = attack.run(observe(cap), Knowledge(labels_mode="known", labels=ym, batch_size=1))
    mean = exp.dataset.x_train.mean(0, keepdim=True)
    got, trivial = psnr(result.images[0], xm[0]), psnr(mean[0], xm[0])
    assert got > trivial + 6, (got, trivial)


@pytest.mark.parametrize("declared", [None, [], [0.5], ["a", "b"], [0.9, 0.9], [1.5, -0.5],
                                      [True, False], [0.5] * 2 + [0.0] * 100])
def test_declared_coefficients_are_checked_as_untrusted_input(declared):
    from attacker.mixing import mix_coefficients

    effects = {"mixed_labels": True, "mix_coefficients": declared}
    with pytest.raises(ValueError, match="mix_coefficients"):
        mix_coefficients(effects, "sources")
    assert mix_coefficients(effects, "mixes") is None  # only the sources model reads them
    assert mix_coefficients({"mixed_labels": True, "mix_coefficients": [0.6, 0.4]},
                            "sources") == (0.6, 0.4)
