"""The package's shape: no import cycles (imports inside functions count) and no class name
defined twice in src/longseq, so one word keeps one meaning."""

from __future__ import annotations

import ast
import functools
from collections import Counter
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "longseq"

# Back arrows other branches are removing (issue 20): (importer, imported). Empty this as
# they merge; the test then guards them too.
KNOWN_BACK_EDGES: set[tuple[str, str]] = {
    ("longseq.models.heads", "longseq.models.generation"),  # heads' generate() hook
    ("longseq.convert.longify", "longseq.convert"),  # longify calls from_huggingface
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _trees() -> dict[str, ast.Module]:
    return {
        _module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in PACKAGE.rglob("*.py")
    }


def import_graph(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """module -> the longseq modules it imports anywhere in its body (functions included).
    `from pkg import name` counts as importing pkg.name when that is a module, else pkg."""
    graph: dict[str, set[str]] = {m: set() for m in trees}
    packages = {m.rpartition(".")[0] for m in trees}
    for module, tree in trees.items():
        is_pkg = module in packages
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    parts = module.split(".")
                    parts = parts if is_pkg else parts[:-1]
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in trees else base
                           for a in node.names]  # fmt: skip
            for t in targets:
                while t and t not in trees:
                    t = t.rpartition(".")[0]
                if t and t != module:
                    graph[module].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: set[tuple[str, ...]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle_through_a_function_import() -> None:
    trees = {
        "longseq.a": ast.parse("import longseq.b\n"),
        "longseq.b": ast.parse("def f():\n    from longseq import a\n"),
        "longseq.c": ast.parse("from longseq.a import x\n"),
    }
    assert cycles(import_graph(trees)) == {("longseq.a", "longseq.b")}


def test_no_import_cycles() -> None:
    graph = import_graph(_trees())
    for importer, imported in KNOWN_BACK_EDGES:
        graph[importer].discard(imported)
    found = cycles(graph)
    assert not found, f"import cycles: {sorted(found)}"


def test_no_class_name_defined_twice() -> None:
    names = Counter(
        node.name
        for tree in _trees().values()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    )
    twice = sorted(n for n, c in names.items() if c > 1)
    assert not twice, f"class names defined more than once in src/longseq: {twice}"


# Packages that must not import the ones above them (DESIGN.md: the arrows point down).
BELOW: dict[str, tuple[str, ...]] = {
    "longseq.data": ("longseq.tasks", "longseq.train", "longseq.compare"),
    "longseq.models": ("longseq.tasks", "longseq.train", "longseq.compare"),
    "longseq.tasks": ("longseq.train", "longseq.compare"),
}


def test_arrows_point_down() -> None:
    graph = import_graph(_trees())
    up = sorted(
        (module, target)
        for module, targets in graph.items()
        for target in targets
        for low, high in BELOW.items()
        if module.startswith(low + ".") or module == low
        if any(target == h or target.startswith(h + ".") for h in high)
    )
    assert not up, f"imports from a lower package up to a higher one: {up}"
