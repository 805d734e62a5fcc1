"""Shared by the tests of attacking your own app: the worked example's package on the path."""

import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_flower_app"


def example_on_path() -> None:
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
