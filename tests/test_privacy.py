"""Epsilon that means what it says: DP-SGD trains on the Poisson batches its accountant
assumes, and every reported epsilon says what it bounds."""

import math

import numpy as np
import pytest
import torch

from attacker.attacks import ATTACKS
from attacker.objective import make_objective
from attacker.problem import Budget
from attacker.target import observe
from clients.defenses import DEFENSES, build_defenses
from clients.defenses.dpsgd import DPSGD
from clients.local import train_round
from fedsim.config import ConfigError, KnowledgeConfig
from fedsim.data.batches import local_batches
from fedsim.defense_params import POISSON_SAMPLED
from fedsim.experiment import experiment_for
from fedsim.privacy import NOT_ACCOUNTED, rdp_epsilon
from lab.oracle import grant_knowledge, occurrence_indices, private_indices
from lab.orchestration.inprocess import local_capture
from tests.helpers import tiny_config

CPU = torch.device("cpu")


def _dp_config(tmp_path, federation=None, attack=None, **params):
    """Digits cut to 64 training images: 2 partitions of 32 (q = 8 / 32 at batch 8)."""
    return tiny_config(tmp_path, data={"name": "digits", "max_train": 64},
                       federation={"batch_size": 8, **(federation or {})},
                       defenses=[{"name": "dpsgd", "params": params}],
                       **({"attack": {"name": "fedavg_replay", **attack}} if attack else {}))


# ------------------------------------------------------------------ Poisson batches
def test_poisson_batches_have_the_expected_mean_size_and_are_a_pure_function():
    partition = np.arange(1000, 1100)           # N = 100, B = 10: q = 0.1, mean size 10
    draws = [len(b) for rnd in range(1, 201)
             for b in local_batches(partition, seed=3, server_round=rnd, partition_id=1,
                                    algorithm="fedavg", batch_size=10, local_steps=10,
                                    sampling="poisson")]
    # 2,000 independent Binomial(100, 0.1) draws: the mean's standard error is
    # sqrt(100 * 0.1 * 0.9 / 2000) = 0.067; the band is 4 of them (fails ~1 in 16,000)
    assert len(draws) == 2000
    assert abs(np.mean(draws) - 10) < 4 * math.sqrt(9 / 2000)
    assert abs(np.var(draws) - 9) < 1.5  # Binomial variance N q (1 - q), not 0 (fixed)
    again = local_batches(partition, seed=3, server_round=7, partition_id=1,
                          algorithm="fedavg", batch_size=10, local_steps=10,
                          sampling="poisson")
    first = local_batches(partition, seed=3, server_round=7, partition_id=1,
                          algorithm="fedavg", batch_size=10, local_steps=10,
                          sampling="poisson")
    assert all(np.array_equal(a, b) for a, b in zip(again, first))
    assert all(set(b) <= set(partition) for b in again)


def test_poisson_steps_per_round_follow_the_algorithm():
    partition = np.arange(50)
    kw = dict(seed=0, server_round=1, partition_id=0, batch_size=8, sampling="poisson")
    assert len(local_batches(partition, algorithm="fedsgd", **kw)) == 1
    assert len(local_batches(partition, algorithm="fedavg", local_steps=3, **kw)) == 3
    # local_epochs: the expected steps of a pass, ceil(50 / 8) = 7 per epoch
    assert len(local_batches(partition, algorithm="fedavg", local_epochs=2, **kw)) == 14


def test_dpsgd_clients_train_on_poisson_batches_the_evaluator_rederives(tmp_path):
    cfg = _dp_config(tmp_path, federation={"local_steps": 6})
    exp = experiment_for(cfg)
    assert exp.sampling == "poisson"
    res = train_round(exp, exp.new_model().state_dict(), 1, 0, build_defenses(cfg), CPU)
    cap = local_capture(cfg)
    batches = exp.client_batches(1, 0)
    assert res.batch_sizes == list(cap.facts.batch_sizes) == [len(b) for b in batches]
    assert len(set(res.batch_sizes)) > 1            # sizes vary around 8
    assert res.num_examples == sum(res.batch_sizes)
    # the evaluator's originals: the distinct examples of those batches, in first use order
    union = np.concatenate(batches)
    assert sorted(private_indices(exp, cap)) == sorted(set(union.tolist()))
    assert cap.facts.distinct_examples == len(set(union.tolist()))
    assert np.array_equal(occurrence_indices(exp, cap), union)
    assert cap.facts.effects["poisson_batches"] and cap.facts.effects["sum_over_batch_size"]
    # without DP-SGD the same federation keeps its fixed-size batches of a shuffle
    plain = experiment_for(tiny_config(tmp_path, data={"name": "digits", "max_train": 64},
                                       federation={"batch_size": 8, "local_steps": 6}))
    assert plain.sampling == "shuffle"
    assert [len(b) for b in plain.client_batches(1, 0)] == [8, 8, 8, 8, 8, 8]


def test_the_defense_list_and_the_batch_oracle_agree_on_poisson_sampling():
    for name, cls in DEFENSES.items():
        assert (name in POISSON_SAMPLED) == bool(cls().effects().get("poisson_batches")), name


# ------------------------------------------------------------------ epsilon
def test_dpsgd_epsilon_equals_opacus_make_private_with_poisson_sampling(tmp_path):
    """Three rounds of 4 DP steps on a partition of 32 at batch 8 (q = 1/4): fedsim's
    client reports what Opacus' own PrivacyEngine reports after 12 Poisson steps."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    z, delta = 1.3, 1e-5
    cfg = _dp_config(tmp_path, federation={"local_steps": 4}, noise_multiplier=z, delta=delta)
    exp = experiment_for(cfg)
    assert len(exp.partitions[0]) == 32
    state, weights = {}, exp.new_model().state_dict()
    reported = [train_round(exp, weights, rnd, 0, build_defenses(cfg), CPU, state)
                .extras["dp-epsilon"] for rnd in (1, 2, 3)]

    model = exp.new_model()
    data = TensorDataset(exp.dataset.x_train[exp.partitions[0]],
                         exp.dataset.y_train[exp.partitions[0]])
    engine = PrivacyEngine(accountant="rdp")
    model, opt, loader = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(data, batch_size=8), noise_multiplier=z, max_grad_norm=1.0,
        poisson_sampling=True)
    opacus_eps, steps = [], 0
    while steps < 12:
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            steps += 1
            if steps % 4 == 0:
                opacus_eps.append(engine.get_epsilon(delta))
            if steps == 12:
                break
    assert engine.accountant.history == [(z, 0.25, 12)]
    assert reported == pytest.approx(opacus_eps, rel=1e-12)
    assert reported[0] < reported[1] < reported[2]


def test_an_empty_poisson_batch_is_a_step_of_noise_only(tmp_path):
    cfg = _dp_config(tmp_path, federation={"local_steps": 1})
    exp = experiment_for(cfg)
    empty = (exp.dataset.x_train[:0], exp.dataset.y_train[:0])
    before = exp.new_model().state_dict()
    model = exp.new_model()
    update, loss, acc, seen, _ = DPSGD(noise_multiplier=0.0).train(
        model, [empty], cfg.federation, {})
    assert seen == 0 and loss == 0 and acc == 0
    assert all(torch.equal(update[k], before[k]) for k in before)
    torch.manual_seed(0)
    noisy, *_ = DPSGD(noise_multiplier=1.0, max_grad_norm=2.0).train(
        exp.new_model(), [empty], cfg.federation, {})
    change = torch.cat([(noisy[k] - before[k]).flatten() for k in before])
    # noise only: lr * z * C / B = 0.5 * 1 * 2 / 8 per entry
    assert change.std().item() == pytest.approx(0.5 * 2.0 / 8, rel=0.05)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # hooks removed


def test_dpsgd_fedavg_replay_is_exact_at_the_true_images_with_varying_batch_sizes(tmp_path):
    """Noise 0 and a clipping bound no gradient reaches: DP-SGD is then plain SGD on the
    sum over the expected batch size; the replay, following the recorded Poisson sizes
    with one dummy per example of every step, is zero at the true images."""
    cfg = _dp_config(tmp_path, federation={"local_steps": 4},
                     noise_multiplier=0.0, max_grad_norm=1e6)
    exp = experiment_for(cfg)
    cap = local_capture(cfg)
    sizes = list(cap.facts.batch_sizes)
    assert len(set(sizes)) > 1
    assert cap.facts.distinct_examples < sum(sizes)  # some examples drawn twice
    obs = observe(cap)
    knowledge = grant_knowledge(KnowledgeConfig(labels="known"), exp, cap, obs.model)
    assert knowledge.batch_size == sum(sizes)
    idx = occurrence_indices(exp, cap)
    x, y = exp.dataset.x_train[idx], exp.dataset.y_train[idx]
    assert torch.equal(knowledge.labels, y)
    attack = ATTACKS["fedavg_replay"](Budget(tv_weight=0.0, distance="l2"))
    prob = attack.problem(obs, knowledge)
    assert prob.local_batch_sizes == sizes and prob.loss_divisor == 8
    _, match = make_objective(prob, attack.budget, pixels=True)(x, None)
    assert abs(float(match)) < 1e-8
    # the batch mean in place of Opacus' sum over the expected batch size: no longer exact
    prob.loss_divisor = None
    _, mean_match = make_objective(prob, attack.budget, pixels=True)(x, None)
    assert float(mean_match) > 1e-4


def test_the_replay_runs_through_an_empty_step(tmp_path):
    cfg = _dp_config(tmp_path, federation={"local_steps": 2, "batch_size": 4},
                     noise_multiplier=0.0, max_grad_norm=1e6)
    cap = local_capture(cfg)
    cap.facts = cap.facts.with_(batch_sizes=[0, *cap.facts.batch_sizes[1:]])
    obs = observe(cap)
    knowledge = grant_knowledge(KnowledgeConfig(labels="restored"), experiment_for(cfg),
                                cap, obs.model)
    result = ATTACKS["fedavg_replay"](Budget(iterations=3)).run(obs, knowledge)
    assert result.images.shape[0] == sum(cap.facts.batch_sizes)
    assert math.isfinite(result.match_loss)


def test_rdp_epsilon_edges():
    assert rdp_epsilon([], 1e-5) == 0.0
    assert rdp_epsilon([(1.0, 0.1, 0)], 1e-5) == 0.0
    assert rdp_epsilon([(0.0, 0.1, 5)], 1e-5) == math.inf
    # composition is additive in RDP: two halves give the whole
    assert rdp_epsilon([(1.0, 0.1, 50), (1.0, 0.1, 50)], 1e-5) == pytest.approx(
        rdp_epsilon([(1.0, 0.1, 100)], 1e-5), rel=1e-12)


def test_flower_local_dp_composes_its_per_round_epsilon(tmp_path):
    cfg = tiny_config(tmp_path, defenses=[{"name": "flower_local_dp",
                                           "params": {"epsilon": 2.0, "delta": 1e-6}}])
    exp = experiment_for(cfg)
    state, weights = {}, exp.new_model().state_dict()
    spent = [train_round(exp, weights, rnd, 0, build_defenses(cfg), CPU, state).extras
             for rnd in (1, 2, 3)]
    assert [s["dp-epsilon"] for s in spent] == [2.0, 4.0, 6.0]
    assert [s["dp-delta"] for s in spent] == pytest.approx([1e-6, 2e-6, 3e-6])


def test_central_dp_accountant_is_client_level_rdp_and_follows_the_weights():
    from server.transport import CentralDPAccount

    acc = CentralDPAccount({"noise_multiplier": 1.5, "delta": 1e-4}, num_sampled=4)
    rows = [acc.release([10.0] * 4) for _ in range(5)]
    assert rows[-1]["dp_epsilon"] == pytest.approx(rdp_epsilon([(1.5, 1.0, 5)], 1e-4))
    assert rows[0]["dp_epsilon"] < rows[-1]["dp_epsilon"]
    assert rows[-1]["dp_accounting"].startswith("client-level")
    # one client with half the weight: it moves the average twice as far
    uneven = CentralDPAccount({"noise_multiplier": 1.5, "delta": 1e-4}, num_sampled=4)
    row = uneven.release([30.0, 10.0, 10.0, 10.0])
    assert row["dp_epsilon"] == pytest.approx(rdp_epsilon([(0.75, 1.0, 1)], 1e-4))


def test_two_dp_defenses_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="at most one differentially private"):
        tiny_config(tmp_path, model={"name": "lenet"},
                    defenses=[{"name": "dpsgd"}, {"name": "flower_local_dp"}])


def test_tables_say_what_the_epsilon_bounds_or_not_accounted(tmp_path):
    from fedsim.records import append_row
    from lab.tables import build_tables

    plain, dp = tmp_path / "plain", tmp_path / "dp"
    for folder in (plain, dp):
        folder.mkdir()
    append_row(plain / "metrics.jsonl", {"round": 1, "global_accuracy": 0.5})
    append_row(dp / "metrics.jsonl", {"round": 1, "global_accuracy": 0.5, "dp_epsilon": 1.2,
                                      "dp_delta": 1e-5, "dp_accounting": DPSGD.accounting})
    assert build_tables(plain)[1][0]["dp_accounting"] == NOT_ACCOUNTED
    row = build_tables(dp)[1][0]
    assert (row["dp_epsilon"], row["dp_delta"]) == (1.2, 1e-5)
    assert row["dp_accounting"].startswith("record-level")


@pytest.mark.parametrize("model", [{"name": "lenet"}, {"name": "convnet", "norm": "group"}])
def test_dpsgd_without_noise_or_clipping_is_sgd_on_every_layer(tmp_path, model):
    """The digits tensors are 1-channel with channels-last strides, so CPU convolutions
    pass channels-last activations on; Opacus' conv grad sampler (`unfold2d`) reads them
    as NCHW and returned zero per-example gradients for every conv after the first: DP-SGD
    never trained those layers. Every layer must move as plain SGD moves it."""
    import torch.nn.functional as F

    cfg = tiny_config(tmp_path, model=model, federation={"batch_size": 8, "local_steps": 2},
                      defenses=[{"name": "dpsgd", "params": {"noise_multiplier": 0.0,
                                                             "max_grad_norm": 1e6}}])
    exp = experiment_for(cfg)
    batches = [(exp.dataset.x_train[i:i + 8], exp.dataset.y_train[i:i + 8]) for i in (0, 8)]
    update, *_ = DPSGD(noise_multiplier=0.0, max_grad_norm=1e6).train(
        exp.new_model(), batches, cfg.federation, {})
    plain = exp.new_model()
    opt = torch.optim.SGD(plain.parameters(), lr=cfg.federation.lr)
    for x, y in batches:
        opt.zero_grad()
        (F.cross_entropy(plain(x), y, reduction="sum") / 8).backward()
        opt.step()
    before = exp.new_model().state_dict()
    for name, p in plain.named_parameters():
        moved = (p.detach() - before[name]).norm()
        assert moved > 0
        assert (update[name] - p.detach()).norm() < 1e-4 * moved + 1e-7, name


def test_an_update_without_any_private_example_is_skipped_not_attacked(tmp_path):
    from fedsim.capture import save_capture
    from lab.orchestration.attacks import attack_capture

    cfg = _dp_config(tmp_path, federation={"local_steps": 2})
    cap = local_capture(cfg)
    cap.facts = cap.facts.with_(batch_sizes=[0, 0], distinct_examples=0)  # all draws empty
    path = save_capture(tmp_path / "run", cap)
    rec = attack_capture(cfg, path, tmp_path / "run", attack_name="fedavg_replay",
                         progress=False)
    assert "no private example" in rec["skipped"] and "error" not in rec
    assert not (tmp_path / "run" / "leakage.jsonl").exists()


def test_the_evaluator_pairs_a_poisson_capture_with_its_distinct_originals(tmp_path):
    """One dummy per example of every step, but each distinct original scored once."""
    from fedsim.capture import save_capture
    from lab.orchestration.attacks import attack_capture

    cfg = _dp_config(tmp_path, federation={"local_steps": 4}, attack={"iterations": 2})
    cap = local_capture(cfg)
    path = save_capture(tmp_path / "run", cap)
    rec = attack_capture(cfg, path, tmp_path / "run", attack_name="fedavg_replay",
                         progress=False)
    assert rec["knowledge"]["batch_size"] == sum(cap.facts.batch_sizes)
    assert rec["batch_size"] == cap.facts.distinct_examples < sum(cap.facts.batch_sizes)
    assert len(rec["pairing"]) == len(set(rec["pairing"])) == cap.facts.distinct_examples


def test_secagg_weight_bound_covers_any_poisson_draw(tmp_path):
    """SecAgg+ quantises each client's weight against max_weight: under Poisson sampling
    every step may draw the whole partition, so the bound is steps x partition size."""
    from server.transport import max_examples_per_round

    exp = experiment_for(_dp_config(tmp_path, federation={"local_steps": 4}))
    assert max_examples_per_round(exp) == 4 * 32


def test_a_round_in_which_every_client_drew_nothing_stops_with_one_line(tmp_path):
    """FedSGD at batch 1 over partitions of 10 (q = 0.1): with seed 0 both clients' round-1
    Poisson batches are empty, every weight is 0, and FedAvg has nothing to average."""
    from lab.orchestration.simulation import RunFailed, run_simulation

    cfg = tiny_config(tmp_path, data={"name": "digits", "max_train": 20},
                      federation={"algorithm": "fedsgd", "batch_size": 1},
                      defenses=[{"name": "dpsgd"}])
    exp = experiment_for(cfg)
    assert [len(exp.client_batches(1, p)[0]) for p in (0, 1)] == [0, 0]
    with pytest.raises(RunFailed, match="empty Poisson batches"):
        run_simulation(cfg)
