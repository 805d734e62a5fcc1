"""What fedsim needs to know about this app that the wire does not carry: declared once."""

from __future__ import annotations

import os

from lab.api import AppFacts
from shapes_app.task import CLASSES, MEAN, MOMENTUM, STD, WEIGHT_DECAY

FACTS = AppFacts(image_shape=(3, 32, 32), num_classes=len(CLASSES), mean=MEAN, std=STD,
                 momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, local_epochs=1,
                 model="shapes_app.task:Net")


def capture_dir() -> str:
    """Where captures go: SHAPES_CAPTURE_DIR, else ./captures (of the process that runs the
    app: with `flwr run . local`, the folder `flwr run` was started in)."""
    return os.environ.get("SHAPES_CAPTURE_DIR", "captures")
