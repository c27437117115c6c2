"""The package's layers import only downward, and no modules import each other in a circle.

Every `import` and `from ... import` of nin_search, at module level or inside a function, is an
arrow (a lazy import still ties the two modules together). Layers, bottom first:

    engine    torch + stdlib: config, model, data, training, lr-finder, snapshots, summary
    spec      what a study or ablation file says
    reports   pandas / plotly / scipy: figures, statistics, HTML pages of plain data
    stores    the databases and files MLflow and Optuna write: URLs (masked), locks, faults
    tracking  MLflow: the store, tracked runs, logged models
    search    Optuna: storages, studies, trials, workers, budgets, study reports
    api       the public Python API: functions that return values, the CLI's work
    cli       argument parsing and the one-line messages
and the package's face (nin_search/__init__.py, __main__.py) above them all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "nin_search"
LAYERS = ["engine", "spec", "reports", "stores", "tracking", "search", "api", "cli"]
FACE = len(LAYERS)  # nin_search/__init__.py and __main__.py


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__",):
        return FACE
    return LAYERS.index(parts[1])


def _imports(path: Path, me: str | None = None) -> set[str]:
    """The nin_search modules path (module me) imports, anywhere in the file."""
    me = me or _module(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "nin_search"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this file is in
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.split(".")[0] != "nin_search":
                continue
            for a in node.names:  # `from pkg import module` names a module
                sub = f"{base}.{a.name}"
                found.add(sub if _exists(sub) else base)
    return found - {me}


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_sits_in_a_known_layer():
    strays = [m for m in _graph() if m.count(".") and m.split(".")[1] not in LAYERS + ["__main__"]]
    # a module outside the layers would escape the test below
    assert strays == []


def test_imports_point_down_only():
    graph = _graph()
    upward = sorted(
        f"{m} -> {t}" for m, targets in graph.items() for t in targets if _layer(t) > _layer(m)
    )
    assert upward == [], "\n".join(upward)


def test_no_import_circles():
    graph = _graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                circles.append(path[path.index(t) :] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert circles == [], "\n".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize(
    "source, arrows",
    [
        ("from nin_search.engine import model\n", {"nin_search.engine.model"}),
        ("def f():\n    from nin_search.search import sweep\n", {"nin_search.search.sweep"}),
        ("from ..engine.config import ConfigError\n", {"nin_search.engine.config"}),
    ],
    ids=["module", "lazy", "relative"],
)
def test_the_walk_sees_every_kind_of_import(tmp_path: Path, source: str, arrows: set[str]):
    # a module of nin_search/reports/: its module-level, lazy and relative imports are arrows
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert _imports(path, "nin_search.reports.probe") == arrows
