"""The library's import graph: DeepSpeed only under ``adamix_ds/training/``, and no cycles.

Oracle: the imports written in the source, read with ``ast`` (deferred imports inside functions
count too: a cycle through one still ties the two modules together), checked on a hand-built
package first, so that the checker is known to find what it looks for.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "adamix_ds"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path, modules: set[str]) -> set[str]:
    """Every module named by an import statement of ``path``, made absolute."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from pkg import sub`` imports the submodule pkg.sub where there is one
            found.update(f"{target}.{a.name}" for a in node.names
                         if f"{target}.{a.name}" in modules)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> every import (inside and outside the package) of a package folder."""
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    return {module_name(p, root): imports_of(p, root, modules) for p in paths}


def deepspeed_importers(graph: dict[str, set[str]], allowed: str) -> list[str]:
    return sorted(m for m, targets in graph.items()
                  if not (m == allowed or m.startswith(allowed + "."))
                  and any(t == "deepspeed" or t.startswith("deepspeed.") for t in targets))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among the package's own modules, as a closed path, or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(t for t in graph[module] if t in graph and t != module):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_checker_finds_a_cycle_and_a_stray_deepspeed_import(tmp_path: Path) -> None:
    pkg = tmp_path / "toy"
    (pkg / "training").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from toy import c\n")   # deferred, still counted
    (pkg / "c.py").write_text("import deepspeed\nfrom . import a\n")
    (pkg / "training" / "__init__.py").write_text("import deepspeed.comm\n")
    graph = import_graph(pkg)
    assert find_cycle(graph) == ["toy.a", "toy.b", "toy.c", "toy.a"]
    assert deepspeed_importers(graph, "toy.training") == ["toy.c"]
    (pkg / "c.py").write_text("import torch\n")
    assert find_cycle(import_graph(pkg)) is None


def test_deepspeed_only_in_training() -> None:
    graph = import_graph(PACKAGE_ROOT)
    assert "adamix_ds.training.engine" in graph or "adamix_ds.training" in graph
    assert deepspeed_importers(graph, "adamix_ds.training") == []


def test_library_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph(PACKAGE_ROOT))
    assert cycle is None, " -> ".join(cycle)


def test_nothing_outside_training_reaches_training() -> None:
    """A module outside ``training/`` that imported it would pull deepspeed in transitively
    (``--eval_only`` and decoding must run without it)."""
    graph = import_graph(PACKAGE_ROOT)
    reach = sorted(m for m, targets in graph.items()
                   if not m.startswith("adamix_ds.training")
                   and any(t == "adamix_ds.training" or t.startswith("adamix_ds.training.")
                           for t in targets))
    assert reach == [], reach
