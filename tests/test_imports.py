"""The seams between library modules, read from their source: no import cycle, and the training recipe
(gr_train/train.py) imported only by the modules that run training."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("gr_train", "ray_jobs")
RECIPE = "gr_train.train"
# The only library modules that may import the recipe: each of them runs training (`gr-train train`, the demo's
# reader pre-training and G-Rerank run, compare's runs, the suite's reader fine-tuning, Ray Train's workers),
# through the entry points below.
RECIPE_RUNNERS = {"gr_train.cli", "gr_train.compare", "gr_train.demo", "gr_train.suite", "ray_jobs.train"}
RECIPE_ENTRY_POINTS = {"main", "setup", "train", "save_checkpoint", "cleanup"}


def library_modules() -> dict[str, Path]:
    """{dotted name: file} for every module of gr_train/ and ray_jobs/."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def imported_modules(tree: ast.Module, modules: dict[str, Path]) -> set[str]:
    """Library modules imported anywhere in `tree`, function-level (lazy) imports included:
    `import a.b`, `from a import b` (b a module), `from a.b import c`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    modules = library_modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = imported_modules(ast.parse(path.read_text(), str(path)), modules) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walk_sees_every_kind_of_import():
    graph = import_graph()
    assert len(graph) >= 30  # 24 gr_train modules + ray_jobs
    assert "gr_train.gumbel" in graph["gr_train.objectives"]  # from gr_train import gumbel
    assert "gr_train.reader" in graph["gr_train.demo_reader"]  # from gr_train.reader import Reader
    assert RECIPE in graph["gr_train.cli"]  # a function-level import (cmd_train)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_only_the_runners_import_the_recipe():
    importers = {name for name, deps in import_graph().items() if RECIPE in deps}
    assert importers <= RECIPE_RUNNERS, f"{sorted(importers - RECIPE_RUNNERS)} import {RECIPE} as a library"


def test_runners_use_only_the_recipe_entry_points():
    """`train.X` in a runner names a step of the recipe, never a helper (models, data and derived values live
    in models.py, data.py and config.py)."""
    modules = library_modules()
    for name in RECIPE_RUNNERS:
        tree = ast.parse(modules[name].read_text())
        used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name) and node.value.id == "train"}
        assert used <= RECIPE_ENTRY_POINTS, f"{name} uses train.{sorted(used - RECIPE_ENTRY_POINTS)}"
