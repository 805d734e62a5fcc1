"""The replay models the client's optimiser: step for step equal to torch.optim.SGD, and
with it the objective is zero at the true images of an app training with momentum and
weight decay on shuffled batches (and clearly not zero if the replay assumed plain SGD)."""

import dataclasses

import pytest
import torch

from attacker.attacks import ATTACKS
from attacker.knowledge import Knowledge
from attacker.local_optimizer import LocalOptimizer
from attacker.objective import make_objective
from attacker.problem import Budget
from attacker.target import observe
from attacker.user_model import normalising
from fedsim.capture import Capture
from fedsim.capture_facts import build
from tests.own_app import example_on_path


@pytest.mark.parametrize("opt", [LocalOptimizer(), LocalOptimizer(momentum=0.9),
                                 LocalOptimizer(momentum=0.9, weight_decay=5e-4),
                                 LocalOptimizer(momentum=0.8, dampening=0.3),
                                 LocalOptimizer(momentum=0.9, nesterov=True, weight_decay=1e-3)])
def test_functional_step_equals_torch_sgd(opt):
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=opt.momentum,
                          weight_decay=opt.weight_decay, dampening=opt.dampening,
                          nesterov=opt.nesterov)
    buf = None
    for step in range(4):
        x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
        sgd.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        grads = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
        sgd.step()
        params, buf = opt.step(params, grads, 0.1, buf)
        for n, p in net.named_parameters():
            torch.testing.assert_close(params[n], p.detach(), rtol=1e-6, atol=1e-7)


def _example_capture(momentum: float, weight_decay: float):
    """The example app's own training of partition 0 in round 1 (its shuffled loader, its
    SGD), observed with the facts it declares (optionally wrong ones)."""
    example_on_path()
    from shapes_app.facts import FACTS
    from shapes_app.task import Net, first_use_order, loader, train

    torch.manual_seed(0)
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train(net, loader(0, 1, size=16, batch_size=6), epochs=1, lr=0.05)
    facts = dataclasses.replace(FACTS, momentum=momentum, weight_decay=weight_decay)
    meta = facts.resolve({"lr": 0.05, "batch-size": 6}, {"num-examples": 16})
    cap = Capture(round=1, partition_id=0, observer="server", kind="weights",
                  weights_before=before, update=net.state_dict(), facts=build(meta))
    x, y = first_use_order(0, 1, size=16, batch_size=6)
    model = Net()
    model.load_state_dict(before)
    return cap, normalising(model, FACTS.mean, FACTS.std), x, y


@pytest.mark.parametrize("declared, zero", [((0.9, 5e-4), True), ((0.0, 0.0), False)])
def test_momentum_replay_is_exact_at_the_true_images(declared, zero):
    cap, model, x, y = _example_capture(*declared)
    obs = observe(cap, "cpu", model)
    attack = ATTACKS["fedavg_replay"](Budget(iterations=1))
    prob = attack.problem(obs, Knowledge(labels_mode="known", batch_size=16, labels=y))
    assert prob.local_batch_sizes == [6, 6, 4]  # 16 examples in batches of 6, one epoch
    _, match = make_objective(prob, attack.budget, pixels=True)(x, None)
    if zero:
        assert float(match) < 1e-5
    else:  # the same update replayed as plain SGD does not fit the true images
        assert float(match) > 1e-3
