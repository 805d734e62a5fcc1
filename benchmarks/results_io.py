"""Where benchmark results go: benchmarks/results/NAME.json, also echoed to the terminal."""

import json
from pathlib import Path


def write_result(name: str, data: dict) -> Path:
    path = Path(__file__).parent / "results" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2))
    return path
