"""The layers import one way: the front end (`flmplan/`) above measure (`profiles/`), decide (`planner/`)
and execute (`runtime/`). planner/ never imports torch, runtime/, profiles/ or the front end; nothing
imports the front end; no two top-level packages import each other. Read from the source (every import
statement, at any depth), so a lazy import inside a function counts too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flmplan", "planner", "profiles", "runtime")
# Package data that is the text of another tool's file, not a module of ours (the torchtitan export's body).
NOT_OURS = {ROOT / "planner" / "data" / "torchtitan_registry.py"}


def imports(package: str) -> dict[str, set[str]]:
    """module path → the top-level names it imports."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        if path in NOT_OURS:
            continue
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


def test_planner_imports_neither_torch_nor_the_other_layers():
    barred = {"torch", "runtime", "profiles", "flmplan", "torchtitan"}
    found = {m: names & barred for m, names in imports("planner").items()}
    assert not {m: n for m, n in found.items() if n}


@pytest.mark.parametrize("package", ["planner", "profiles", "runtime"])
def test_nothing_imports_the_front_end(package):
    assert not [m for m, names in imports(package).items() if "flmplan" in names]


def test_no_two_top_level_packages_import_each_other():
    edges = {(p, q) for p in PACKAGES for names in imports(p).values() for q in names & set(PACKAGES) if q != p}
    assert not {(p, q) for p, q in edges if (q, p) in edges}, edges
    # The direction of each layer: the profiler and the runtime build on the planner's descriptions, and
    # the profiler times the runtime's own model.
    assert edges <= {("flmplan", "planner"), ("flmplan", "profiles"), ("flmplan", "runtime"),
                     ("profiles", "planner"), ("profiles", "runtime"), ("runtime", "planner")}, edges
