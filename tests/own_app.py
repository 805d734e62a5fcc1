"""Shared by the tests of attacking your own app: the worked example's package on the path,
and a tiny app of its own (model, capture) for the tests that need no Flower run."""

import sys
from pathlib import Path

import torch
import torch.nn as nn

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_flower_app"
TINY = "tests.own_app:tiny"  # the tiny app's model factory, as `fedsim attack --model` takes it


def example_on_path() -> None:
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))


class Tiny(nn.Module):
    """A linear classifier of 3x4x4 images: an app's model small enough for a unit test."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return Tiny()


def tiny_capture(root: Path, *, facts=None, sent=None, examples: int = 4, seed: int = 0,
                 observer: str = "server", partition_id: int = 0, **meta):
    """A capture of the tiny app as `capture_strategy` writes it (one client, `examples`
    images in batches of 2, the train config `sent`): (path, images, labels)."""
    from fedsim.app_facts import AppFacts
    from fedsim.capture import Capture, save_capture
    from fedsim.capture_facts import build
    from lab.api import client_update

    facts = facts or AppFacts(image_shape=(3, 4, 4), num_classes=3)
    sent = {"lr": 0.1, "batch-size": 2} if sent is None else sent
    model = tiny()
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.rand(examples, 3, 4, 4, generator=gen), torch.arange(examples) % 3
    update = client_update(model, x, y, lr=0.1, batch_size=2)
    declared = facts.resolve(sent, {"num-examples": examples})
    cap = Capture(round=1, partition_id=partition_id, observer=observer, kind="weights",
                  weights_before=model.state_dict(), update=update,
                  facts=build({**declared, "node_id": 123, "partition": partition_id,
                               "keyed_by": "partition",
                               "client_metrics": {"num-examples": float(examples)}, **meta}))
    return save_capture(root, cap), x, y
