import os
import tempfile

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
# Ray's socket paths must stay short: a fresh folder directly under /tmp. Each pytest-xdist
# worker gets its own (the controller's would be inherited), so no two share a Ray
# session or a Flower home.
_worker = os.environ.get("PYTEST_XDIST_WORKER")
for _var, _prefix in (("RAY_TMPDIR", "ray"), ("FLWR_HOME", "flwr")):
    if _worker or _var not in os.environ:
        os.environ[_var] = tempfile.mkdtemp(prefix=f"{_prefix}{_worker or ''}")


@pytest.fixture(autouse=True)
def _torch_threads():
    """One torch thread, as the clients use by default: the server app shares this process
    and sets its own count, and with oneDNN on this CPU (torch 2.14.1) a ResNet-18 shortcut
    gradient is nondeterministic with 2 threads (see README, Known issues)."""
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture
def lpips_backbones():
    """The verified LPIPS backbone folder (`fedsim lpips install`). Without it the test is
    skipped with the reason, unless FEDSIM_REQUIRE_LPIPS=1 (CI sets it): then it fails, so
    CI can never pass by skipping what it was meant to check."""
    from fedsim.metrics.lpips_weights import BACKBONES, cache_dir, unavailable_reason

    reasons = [r for r in (unavailable_reason(net) for net in BACKBONES) if r]
    if reasons:
        if os.environ.get("FEDSIM_REQUIRE_LPIPS") == "1":
            pytest.fail(f"FEDSIM_REQUIRE_LPIPS=1 but {reasons[0]}")
        pytest.skip(reasons[0])
    return cache_dir()


# modules whose tests start a federation, a deployment, a sweep or a daemon
SLOW_MODULES = {"test_deploy", "test_docker", "test_sweep", "test_flwr_run", "test_own_app",
                "test_failures", "test_faults", "test_simulation", "test_observers",
                "test_secagg", "test_flower_dp", "test_report", "test_tables",
                "test_folder_data", "test_privacy", "test_client_mods"}
# tests that share one fixed resource run in one pytest-xdist worker, one after another:
# `flwr run . local` binds its local SuperLink's default ports; the Docker tests share one
# daemon
SHARED = {"test_flwr_run": "flwr-run", "test_own_app": "flwr-run", "test_docker": "docker"}
# modules whose module-scoped fixture runs an experiment: their tests go to one worker, so
# the fixture runs once (pytest-xdist otherwise builds it in every worker that gets one of
# them: test_report's was built twice, 54 s and 52 s)
ONE_WORKER = {"test_report", "test_simulation", "test_secagg"}


# CPU seconds of each module's tests, measured one after another on this 2-core machine
# (a /proc/stat delta around each test): the heaviest start first, so that no worker is
# left with a long test while the others are idle (pyproject.toml turns off
# pytest-xdist's own reordering, which sorts by test count)
WEIGHT = {"test_deploy": 306, "test_groups": 165, "test_sweep": 160, "test_faults": 119,
          "test_own_app": 100, "test_flwr_run": 100, "test_failures": 98,
          "test_observers": 70, "test_flower_dp": 65, "test_engine": 53,
          "test_simulation": 35, "test_folder_data": 25, "test_report": 20,
          "test_secagg": 19, "test_tables": 19, "test_privacy": 18}


def _module(item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which turns groups into node ids
def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -WEIGHT.get(_module(item), 0))  # stable: file order within
    for item in items:
        module = _module(item)
        if module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
        if module in SHARED:
            item.add_marker(pytest.mark.xdist_group(SHARED[module]))
        elif module in ONE_WORKER:
            item.add_marker(pytest.mark.xdist_group(module))


@pytest.fixture(autouse=True)
def _group_applied(request):
    """Fail a test of a shared group that runs outside its group (a pytest/pytest-xdist pair
    that ignores groups, or a hook order that adds them too late): concurrent `flwr run`s
    would share one local SuperLink and each other's captures, and fail as if fedsim did."""
    module = _module(request.node)
    if getattr(request.config.option, "loadgroup", False) and module in SHARED \
            and "@" not in request.node.nodeid:
        pytest.fail(f"pytest-xdist group {SHARED[module]!r} not applied to "
                    f"{request.node.nodeid}; see pyproject.toml's pytest pin")
