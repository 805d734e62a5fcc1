"""Grouped attacks (attacker.groups): each member of a group takes the steps it would take
alone from the same seed, for gradient and FedAvg-replay targets, with and without known
labels and the BatchNorm prior, in every engine mode that runs on a CPU."""

import pytest
import torch

from attacker.adam import invert_adam
from attacker.engine import cpu_candidates, resolve_mode
from attacker.groups import default_group_size, invert_group, invert_split, shape_key
from attacker.problem import Budget, InversionProblem
from clients.training import batch_gradient
from fedsim.experiment import experiment_for
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("groups"),
                      model={"name": "convnet", "norm": "batch", "width": 4})
    return experiment_for(cfg)


def _member(exp, k: int, *, replay: bool, known: bool, bn: bool) -> InversionProblem:
    """Capture k: its own weights (perturbed by seed k), its own two digits, its update."""
    ds = exp.dataset
    model = exp.new_model()
    gen = torch.Generator().manual_seed(100 + k)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    x, y = ds.x_train[2 * k:2 * k + 2], ds.y_train[2 * k:2 * k + 2]
    g, _, _ = batch_gradient(model, x, y)
    targets = ([(0.1 * k + torch.zeros(m.num_features), torch.ones(m.num_features))
                for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
               if bn else None)
    prob = InversionProblem(model, g, 2, ds.image_shape, ds.num_classes,
                            labels=y if known else None, bn_targets=targets,
                            input_mean=ds.mean, input_std=ds.std)
    if replay:  # two local steps of one example each; the target a weight change
        prob.local_steps, prob.local_batch_sizes, prob.local_lr = 2, [1, 1], 0.5
        prob.target = {n: -0.5 * t for n, t in g.items()}
    return prob


def _same_as_alone(problems, budget, seeds, alone_budget=None):
    """Measured gaps (eager, 4 steps): losses within 1e-6, pixels within 1e-5 on all but a
    few entries, where a gradient element near zero changes sign with the rounding of a
    vmapped convolution and Adam's first steps move it by a full step. `alone_budget`: the
    budget each member runs by itself (default: the group's)."""
    grouped = invert_group(problems, budget, seeds)
    assert len(grouped) == len(problems)
    for prob, seed, got in zip(problems, seeds, grouped):
        alone = invert_adam(prob, alone_budget or budget, seed=seed)
        assert got.engine.endswith(f"+group{len(problems)}")
        torch.testing.assert_close(torch.tensor(got.restart_losses),
                                   torch.tensor(alone.restart_losses), rtol=1e-3, atol=1e-5)
        off = (got.images - alone.images).abs() > 1e-3
        assert float(off.float().mean()) < 0.02
        assert torch.equal(got.labels, alone.labels)
    return grouped


@pytest.mark.parametrize("size", [1, 3, 8])
@pytest.mark.parametrize("replay", [False, True])
@pytest.mark.parametrize("known,bn", [(True, False), (False, True)])
def test_each_member_takes_its_solo_steps(exp, size, replay, known, bn):
    problems = [_member(exp, k, replay=replay, known=known, bn=bn) for k in range(size)]
    budget = Budget(iterations=4, restarts=2, compile="eager", bn_weight=0.1 if bn else 0.0)
    grouped = _same_as_alone(problems, budget, seeds=list(range(size)))
    if size > 1:  # members really differ: their own weights, targets and starts
        assert grouped[0].restart_losses != grouped[1].restart_losses


@pytest.mark.parametrize("replay", [False, True])
def test_the_plain_autograd_eager_loop_takes_the_traced_steps(exp, replay):
    """One restart, nothing vmapped: `eager` runs on plain autograd (inner gradients with
    create_graph, attacker.objective.autograd_grad) instead of torch.func; with BatchNorm
    statistics, optimised labels and a FedAvg replay it takes the traced graph's steps."""
    prob = _member(exp, 1, replay=replay, known=False, bn=True)
    budget = dict(iterations=6, restarts=1, bn_weight=0.1, tv_weight=0.0, batch_restarts="off")
    plain = invert_adam(prob, Budget(**budget, compile="eager"), seed=4)
    traced = invert_adam(prob, Budget(**budget, compile="graph"), seed=4)
    assert (plain.engine, traced.engine) == ("eager", "graph")
    torch.testing.assert_close(torch.tensor(plain.history), torch.tensor(traced.history),
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(plain.images, traced.images, rtol=0, atol=1e-4)
    assert torch.equal(plain.labels, traced.labels)


@pytest.mark.parametrize("mode,batched", [("eager", "on"), ("graph", "off"), ("graph", "on"),
                                          ("inductor", "off")])
def test_every_cpu_mode_runs_groups(exp, mode, batched):
    """Each member alone in the same mode; under inductor, alone in the traced graph that
    inductor compiles (its own compile of the one-member program costs as much CPU as the
    group's, ~70 s here, and tests/test_engine.py checks a compiled attack alone against
    the reference loop), and the group's restarts looped (`graph-on` checks them vmapped
    inside a group; compiling that larger program took 103 s of CPU against 64)."""
    problems = [_member(exp, k, replay=False, known=True, bn=True) for k in range(3)]
    budget = Budget(iterations=3, restarts=2, compile=mode, batch_restarts=batched)
    alone = budget.model_copy(update={"compile": "graph"}) if mode == "inductor" else budget
    grouped = _same_as_alone(problems, budget, seeds=[5, 6, 7], alone_budget=alone)
    assert grouped[0].engine.startswith(mode)


def test_shapes_that_differ_are_not_grouped(exp):
    a = _member(exp, 0, replay=False, known=True, bn=False)
    b = _member(exp, 1, replay=False, known=False, bn=False)
    c = _member(exp, 2, replay=True, known=True, bn=False)
    assert shape_key(a) == shape_key(_member(exp, 3, replay=False, known=True, bn=False))
    assert len({shape_key(a), shape_key(b), shape_key(c)}) == 3
    with pytest.raises(ValueError, match="2 shapes"):
        invert_group([a, b], Budget(iterations=1), [0, 0])


def test_out_of_memory_splits_until_every_item_is_solved():
    calls = []

    def solve(items):
        calls.append(len(items))
        if len(items) > 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ...")
        return [i * 10 for i in items]

    assert invert_split(solve, list(range(5))) == [0, 10, 20, 30, 40]
    assert calls == [5, 2, 3, 1, 2]
    with pytest.raises(ValueError):
        invert_split(lambda items: (_ for _ in ()).throw(ValueError("other")), [1, 2])


def test_auto_mode_for_groups_is_one_that_runs_them():
    """On a CPU auto resolves to a mode tested on groups above, or to the probe, whose
    candidates are those modes; on CUDA to cudagraph (runs the same bound step; measured
    only by benchmarks/gpu/attack_throughput.sh)."""
    for kw in ({"n_params": 60_000, "iterations": 10_000}, {"n_params": 11_000_000},
               {"n_params": 60_000, "iterations": 100, "batch": 64}):
        assert resolve_mode("auto", "cpu", vmapped=True, **kw) in ("eager", "graph", "probe")
    assert set(cpu_candidates(60_000, 10_000)) <= {"eager", "graph", "inductor"}
    assert resolve_mode("auto", "cuda", vmapped=True, n_params=60_000) == "cudagraph"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_mode("cudagraph", "cpu", vmapped=True)


def test_on_a_cpu_unset_group_size_groups_only_where_it_paid(exp, tmp_path):
    """The BatchNorm ConvNet (normalised convolutions, slower vmapped on a CPU) is attacked
    one at a time; the LeNet, where grouping paid, in groups."""
    budget = Budget(iterations=10)
    assert default_group_size(_member(exp, 0, replay=False, known=True, bn=False), budget) == 1
    lenet = experiment_for(tiny_config(tmp_path, model={"name": "lenet"}))
    x, y = lenet.dataset.x_train[:2], lenet.dataset.y_train[:2]
    model = lenet.new_model()
    g, _, _ = batch_gradient(model, x, y)
    prob = InversionProblem(model, g, 2, lenet.dataset.image_shape, lenet.dataset.num_classes,
                            labels=y, input_mean=lenet.dataset.mean, input_std=lenet.dataset.std)
    assert default_group_size(prob, budget) > 1
