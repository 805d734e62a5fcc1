import os
import tempfile

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
# Ray's socket paths must stay short: a fresh folder directly under /tmp.
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray"))
os.environ.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="flwr"))


@pytest.fixture(autouse=True)
def _torch_threads():
    """One torch thread, as the clients use by default: the server app shares this process
    and sets its own count, and with oneDNN on this CPU (torch 2.14.1) a ResNet-18 shortcut
    gradient is nondeterministic with 2 threads (see README, Known issues)."""
    import torch

    torch.set_num_threads(1)
    yield
