"""The import graph of the project's modules has no cycle, counting the
imports inside functions too: a function-local import must be there to load
something late (an optional extra, a plotting library), never to dodge a
cycle. A cycle means two modules that are really one, or a piece that
belongs in a lower layer (as ``pagesim/replica.py`` is under ``replay`` and
``cluster``)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Source folders and the package each one is installed as.
FOLDERS = {"sim": "pagesim.sim", "traces": "pagesim.traces", "analysis": "pagesim.analysis",
           "gpu": "pagesim.gpu", "pagesim": "pagesim"}


def project_modules() -> dict[str, Path]:
    mods = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            mods[".".join((package, *parts))] = path
    return mods


def imports_of(path: Path, mods: dict) -> set[str]:
    """Project modules ``path`` imports anywhere (``from pkg import mod``
    counts as ``pkg.mod``, not as ``pkg``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & mods.keys()
            out.update(subs)
            if len(subs) < len(node.names):
                out.add(node.module)
    return out & mods.keys()


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (a path that returns to its start), or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done

    def visit(v: str, path: list[str]) -> list[str] | None:
        state[v] = 1
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w, path + [w])):
                return found
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v, [v])):
            return found
    return None


def test_no_import_cycle_even_through_function_local_imports():
    mods = project_modules()
    assert len(mods) > 100, "the source folders were not found"
    graph = {m: imports_of(p, mods) - {m} for m, p in mods.items()}
    assert "pagesim.replica" in graph["pagesim.cluster"], "the graph misses a known import"
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
