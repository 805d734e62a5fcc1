"""The floors, kept by walking every import (module level and inside functions):

    lab/                                 evaluator, orchestration, CLI    (top)
    clients/ · server/ · attacker/       blind to each other               (middle)
    fedsim/                              config, data, models, metrics,    (base)
                                         capture format, records, runtime
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "fedsim": ("clients", "server", "attacker", "lab"),
    "clients": ("server", "attacker", "lab"),
    "server": ("clients", "attacker", "lab"),
    "attacker": ("clients", "server", "lab"),
}


def imports_of(package: str):
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                yield path.relative_to(ROOT), name


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down(package):
    bad = [f"{path} imports {name}" for path, name in imports_of(package)
           if name.split(".")[0] in FORBIDDEN[package]]
    assert bad == []


def test_the_walk_sees_imports_inside_functions():
    found = {name for path, name in imports_of("lab") if path.name == "validation.py"}
    assert {"attacker.attacks", "clients.defenses"} <= found
