"""The attack engine: every way of running the steps follows the plain autograd reference of
Geiping et al.'s Inverting Gradients, and the defaults beat the old ones at equal steps."""

import pytest
import torch

from attacker.adam import invert_adam
from attacker.engine import cpu_candidates, resolve_mode
from attacker.problem import Budget, InversionProblem
from attacker.reference import invert_reference
from clients.training import batch_gradient
from fedsim.experiment import experiment_for
from fedsim.metrics import score_reconstruction
from tests.helpers import tiny_config


def _first_of_each_class(ds, n):
    idx = [int((ds.y_train == c % ds.num_classes).nonzero()[c // ds.num_classes])
           for c in range(n)]
    return ds.x_train[idx], ds.y_train[idx]


def _problem(exp, n):
    x, y = _first_of_each_class(exp.dataset, n)
    model = exp.new_model()
    g, _, _ = batch_gradient(model, x, y)
    ds = exp.dataset
    return InversionProblem(model, g, n, ds.image_shape, ds.num_classes, labels=y,
                            input_mean=ds.mean, input_std=ds.std), x, y


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return experiment_for(tiny_config(tmp_path_factory.mktemp("engine")))


MODES = [("eager", "off"), ("eager", "on"), ("graph", "off"), ("graph", "on")]


def _both(prob, mode, batched, **budget):
    ref = invert_reference(prob, Budget(**budget), seed=3)
    fast = invert_adam(prob, Budget(**budget, compile=mode, batch_restarts=batched), seed=3)
    assert fast.engine == mode + ("+vmap" if batched == "on" else "")
    return ref, fast


@pytest.mark.parametrize("restarts", [1, 4])
@pytest.mark.parametrize("mode,batched", MODES)
def test_fast_path_takes_the_reference_steps(digits, restarts, mode, batched):
    """Same start, same steps: the same objective value per restart and the same images.
    Without the TV prior the objective is smooth and the gaps after 30 steps are float
    rounding (measured: 3e-7 in pixels, 1e-7 in loss); the tolerances leave a factor of 30."""
    prob, _, _ = _problem(digits, 2)
    ref, fast = _both(prob, mode, batched, iterations=30, restarts=restarts, tv_weight=0.0)
    torch.testing.assert_close(torch.tensor(fast.restart_losses),
                               torch.tensor(ref.restart_losses), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast.images, ref.images, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode,batched", MODES)
def test_with_the_tv_prior_the_fast_path_takes_the_reference_steps(digits, mode, batched):
    """Anisotropic TV's gradient is a sign of neighbour differences: pixels clamped to the
    same bound at the start are tied, and after one Adam step they differ by rounding, so
    either loop may break the tie (a jump of tv_weight/112 in one pixel's gradient here)
    and the trajectories part. Both loops take the same first step (measured gap 6e-8
    in pixels), and after 30 steps their objective values agree to the tie-breaking
    (measured 0.7 % on the restart that breaks a tie, 5e-6 on the others)."""
    prob, _, _ = _problem(digits, 2)
    ref, fast = _both(prob, mode, batched, iterations=1, restarts=4)
    torch.testing.assert_close(fast.images, ref.images, rtol=0, atol=1e-5)
    ref, fast = _both(prob, mode, batched, iterations=30, restarts=4)
    torch.testing.assert_close(torch.tensor(fast.restart_losses),
                               torch.tensor(ref.restart_losses), rtol=2e-2, atol=1e-5)


def test_compiled_step_takes_the_reference_steps(digits):
    """The inductor mode compiles the traced step (about 10-25 s here) and still follows
    the reference; a failed compile would say so and fall back to 'graph'."""
    prob, _, _ = _problem(digits, 2)
    ref = invert_reference(prob, Budget(iterations=20), seed=1)
    fast = invert_adam(prob, Budget(iterations=20, compile="inductor"), seed=1)
    assert fast.engine == "inductor"
    torch.testing.assert_close(torch.tensor(fast.restart_losses),
                               torch.tensor(ref.restart_losses), rtol=1e-3, atol=1e-4)


def test_signed_gradient_option_follows_the_reference(digits):
    prob, _, _ = _problem(digits, 1)
    ref = invert_reference(prob, Budget(iterations=20, signed=True), seed=0)
    fast = invert_adam(prob, Budget(iterations=20, signed=True, compile="graph"), seed=0)
    torch.testing.assert_close(torch.tensor(fast.restart_losses),
                               torch.tensor(ref.restart_losses), rtol=1e-3, atol=1e-4)


def test_mode_choice():
    assert resolve_mode("auto", "cpu", n_params=60_000, iterations=10_000) == "probe"
    # a short run of one restart of one capture: the plain autograd loop
    assert resolve_mode("auto", "cpu", n_params=60_000, iterations=100) == "eager"
    # vmapped restarts or a group: the traced graph for a few small examples at once
    assert resolve_mode("auto", "cpu", n_params=60_000, iterations=100, vmapped=True) == "graph"
    assert resolve_mode("auto", "cpu", n_params=60_000, iterations=100, batch=16,
                        vmapped=True) == "eager"
    assert resolve_mode("auto", "cpu", n_params=11_000_000, iterations=300,
                        vmapped=True) == "eager"
    assert cpu_candidates(60_000, 10_000) == ["eager", "graph", "inductor"]
    assert cpu_candidates(11_000_000, 10_000) == ["eager", "graph"]
    assert resolve_mode("auto", "cuda") == "cudagraph"
    with pytest.raises(ValueError, match="cudagraph"):
        resolve_mode("cudagraph", "cpu")
    with pytest.raises(ValueError, match="not one of"):
        resolve_mode("jit", "cpu")


def test_default_beats_the_old_per_layer_default_at_equal_steps(tmp_path):
    """natural32 LeNet, one image per class (first 3 classes), 200 steps, known labels.
    Measured mean PSNR: new default (one cosine, TV 0.1, plain Adam in normalised
    coordinates) 14.1 dB (11.8, 20.0, 10.6), the old one (per-layer cosines, TV 1e-4, signed
    Adam) 9.7 dB (8.8, 11.4, 8.9)."""
    exp = experiment_for(tiny_config(tmp_path, data={"name": "natural32"}))
    old, new = [], []
    for c in range(3):
        ds = exp.dataset
        i = int((ds.y_train == c).nonzero()[0])
        x, y = ds.x_train[i:i + 1], ds.y_train[i:i + 1]
        model = exp.new_model()
        g, _, _ = batch_gradient(model, x, y)
        prob = InversionProblem(model, g, 1, ds.image_shape, ds.num_classes, labels=y,
                                input_mean=ds.mean, input_std=ds.std)
        for budget, out in ((Budget(iterations=200), new),
                            (Budget(iterations=200, distance="layer_cosine", tv_weight=1e-4,
                                    signed=True), old)):
            res = invert_adam(prob, budget, seed=0)
            out.append(score_reconstruction(x, res.images, y, res.labels)["psnr"])
    assert sum(new) / 3 > 11.5 and sum(new) / 3 > sum(old) / 3 + 2.5, (new, old)


def test_auto_probe_keeps_a_measured_mode_that_takes_the_reference_steps(digits, monkeypatch):
    """A long auto run times the candidates at start-up; whichever it keeps follows the
    reference (the probe is shortened here by lowering its threshold)."""
    import attacker.engine as engine

    monkeypatch.setattr(engine, "AUTO_PROBE_MIN_ITERATIONS", 10)
    monkeypatch.setattr(engine, "AUTO_INDUCTOR_MIN_ITERATIONS", 10**9)
    prob, _, _ = _problem(digits, 2)
    ref = invert_reference(prob, Budget(iterations=20), seed=2)
    fast = invert_adam(prob, Budget(iterations=20), seed=2)
    assert fast.engine in ("eager", "graph")
    torch.testing.assert_close(torch.tensor(fast.restart_losses),
                               torch.tensor(ref.restart_losses), rtol=1e-3, atol=1e-4)
