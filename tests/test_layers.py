"""The house imports one way (docs/architecture.md): the front end (`flmplan/`) above measure (`profiles/`),
decide (`planner/`) and execute (`runtime/`); inside planner/ and runtime/ each package imports only
the packages below it in LAYERS; no module imports, at any depth, a module that imports it back. Read
from the source (every import statement, inside functions and under TYPE_CHECKING too), so a lazy
import counts."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flmplan", "planner", "profiles", "runtime")
# Package data that is the text of another tool's file, not a module of ours (the torchtitan export's body).
NOT_OURS = {ROOT / "planner" / "data" / "torchtitan_registry.py"}

# Each room of planner/ and runtime/, lowest first: a room imports only itself and the rooms before it.
LAYERS = {
    "planner": ["planner.errors", "planner.jsonio", "planner.model", "planner.cost", "planner.layout",
                "planner.sim", "planner.growth", "planner.plan", "planner.export", "planner.report"],
    "runtime": ["runtime.hooks", "runtime.model", "runtime.data", "runtime.checkpoint", "runtime.evaluation",
                "runtime.objectives", "runtime.parallel", "runtime.growth", "runtime.training", "runtime.train",
                "runtime.export"],
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path not in NOT_OURS:
                out[module_name(path)] = path
    return out


MODULES = modules()


def imported(path: Path) -> set[str]:
    """The modules of ours that a file imports (`from a.b import c` names a.b.c where c is a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return {n for n in names if n in MODULES}


GRAPH = {m: imported(p) - {m} for m, p in MODULES.items()}


def room(module: str) -> tuple[str, int] | None:
    """(the room of a planner/ or runtime/ module, its rank in LAYERS)."""
    for rank, name in enumerate(LAYERS.get(module.split(".")[0], [])):
        if module == name or module.startswith(name + "."):
            return name, rank
    return None


def test_no_import_circle_anywhere():
    """Tarjan's strongly connected components over every module: each must be a single module."""
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_planner_imports_neither_torch_nor_the_other_layers():
    barred = {"torch", "runtime", "profiles", "flmplan", "torchtitan"}
    found = {}
    for m, p in MODULES.items():
        if m.startswith("planner"):
            tops = set()
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, ast.Import):
                    tops |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    tops.add(node.module.split(".")[0])
            if tops & barred:
                found[m] = tops & barred
    assert not found


def test_top_level_packages_import_one_way():
    edges = {(a.split(".")[0], b.split(".")[0]) for a, bs in GRAPH.items() for b in bs
             if a.split(".")[0] != b.split(".")[0]}
    # The profiler and the runtime build on the planner's descriptions, the profiler times the runtime's
    # own model, and nothing imports the front end.
    assert edges <= {("flmplan", "planner"), ("flmplan", "profiles"), ("flmplan", "runtime"),
                     ("profiles", "planner"), ("profiles", "runtime"), ("runtime", "planner")}, edges


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_rooms_import_only_the_rooms_below(package):
    upward = []
    for a, bs in GRAPH.items():
        if not a.startswith(package + ".") or a.endswith("__init__"):
            continue
        ra = room(a)
        assert ra is not None, f"{a} is in no room of LAYERS"
        for b in bs:
            rb = room(b) if b.split(".")[0] == package else None
            if rb is not None and rb[1] > ra[1]:
                upward.append(f"{a} → {b}")
    assert not upward, upward


def test_every_room_says_what_it_decides_and_may_import():
    """Each room's __init__.py is its doorplate: what it is for and which rooms it may import."""
    for rooms in LAYERS.values():
        for name in rooms:
            path = ROOT / name.replace(".", "/") / "__init__.py"
            if not path.exists():              # a room of one module (planner.errors, runtime.train)
                assert (ROOT / (name.replace(".", "/") + ".py")).exists(), name
                continue
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert len(doc.split()) >= 12 and "import" in doc, f"{path} does not say what it may import"


def test_one_file_name_per_module():
    """No two modules share a file name: a reader told `plan.py` or `run.py` finds one file."""
    seen: dict[str, list[str]] = {}
    for m, p in MODULES.items():
        if p.name != "__init__.py":
            seen.setdefault(p.name, []).append(m)
    assert not {n: ms for n, ms in seen.items() if len(ms) > 1}


def test_modules_and_functions_stay_short():
    """No module over 450 lines, no function over 80 (docs/architecture.md, "Size")."""
    long = []
    for m, p in MODULES.items():
        text = p.read_text()
        if len(text.splitlines()) > 450:
            long.append(f"{m}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 80:
                long.append(f"{m}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


def test_the_architecture_page_and_readme_list_the_rooms():
    """docs/architecture.md names every room of LAYERS and no folder that is not one; the README's
    "How it is built" names the four packages and links the page."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:planner|runtime)/[a-z_]+)/?`", page))
    folders = {f"{p}/{d.name}" for p in LAYERS for d in (ROOT / p).iterdir()
               if d.is_dir() and (d / "__init__.py").exists()}
    assert folders <= named, folders - named
    assert named <= folders | {r.replace(".", "/") for rooms in LAYERS.values() for r in rooms}, named - folders
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## How it is built", 1)[1].split("\n## ", 1)[0]
    assert "docs/architecture.md" in section
    assert all(f"`{p}/`" in section for p in PACKAGES)
