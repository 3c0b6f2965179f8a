"""The package layout is the pipeline: imports only go down the layers, and no module cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "harness"

# Top of the pipeline last. A module may import its own layer and the layers before it.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "harness",
        "types",
        "state",
        "timestamps",
        "pricing",
        "instruments",
        "stats",
        "coins",
        "selection",
        "strict_json",
    ),
    ("data",),
    ("engine",),
    ("simulator",),
    ("llm",),
    ("policies",),
    ("reports",),
    ("experiments",),
    ("training",),
    ("cli",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every `harness.*` module a file imports, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("harness"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("harness"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_package_module_has_a_layer() -> None:
    unknown = sorted({_layer(m) for m in _graph()} - set(RANK))
    assert not unknown, f"modules outside the documented layers: {unknown}"


@pytest.mark.parametrize("module", sorted(_graph()))
def test_imports_only_go_down_the_layers(module: str) -> None:
    upward = [m for m in _graph()[module] if RANK[_layer(m)] > RANK[_layer(module)]]
    assert not upward, f"{module} imports a higher layer: {upward}"


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])


def test_reports_never_read_experiments() -> None:
    graph = _graph()
    offenders = {
        m: sorted(i for i in graph[m] if _layer(i) == "experiments")
        for m in graph
        if _layer(m) == "reports"
    }
    assert not any(offenders.values()), offenders


def test_no_module_is_left_at_an_old_flat_path() -> None:
    moved = ("outcomes", "features", "metrics", "config", "markets", "rewards", "experiment")
    moved += ("report", "compare", "dataset", "export")
    assert not [name for name in moved if (PACKAGE / f"{name}.py").exists()]
