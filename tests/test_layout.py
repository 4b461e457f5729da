"""The layout: no import cycle, short functions, and the public API in package ``__init__`` files only.

No library function has more than 80 lines of code (its docstring, blank lines and comment lines not
counted). ``__all__`` is defined only in package ``__init__`` files. ``art_fisher.detection`` and
``art_fisher.adversarial`` do not import each other (the detection logit lives in ``detection``).

The import graph is read from the source (``ast``), not by importing: an edge ``a -> b`` for every
``import b`` / ``from b import ...`` anywhere in ``a`` (module level, ``if TYPE_CHECKING`` blocks and
imports deferred into functions alike: a deferred import hides a cycle, it does not remove it), with
``from package import name`` pointing at the submodule when ``name`` is one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("art_fisher", "nni_lease")
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_known_edges():
    graph = import_graph()
    assert "art_fisher.detection._persistence" in graph["art_fisher.detection._base"]
    assert "art_fisher.metrics._trace" in graph["art_fisher.metrics"]
    assert "art_fisher.metrics._engine._layers._base" in graph["art_fisher.metrics._engine._layers._linear"]


def test_a_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert _cycles(import_graph()) == []


def test_persistence_does_not_know_the_detectors():
    known = {"art_fisher.detection._base", "art_fisher.detection._detector", "art_fisher.detection._stacked"}
    assert not known & import_graph()["art_fisher.detection._persistence"]
    source = (ROOT / "art_fisher" / "detection" / "_persistence.py").read_text(encoding="utf-8")
    assert "detection._detector" not in source and "detector._" not in source


def _subpackage_edges(graph: dict[str, set[str]], a: str, b: str) -> list[tuple[str, str]]:
    return sorted((m, t) for m, targets in graph.items() if m.startswith(a) for t in targets if t.startswith(b))


def test_detection_and_adversarial_do_not_import_each_other():
    graph = import_graph()
    both = (
        _subpackage_edges(graph, "art_fisher.detection", "art_fisher.adversarial"),
        _subpackage_edges(graph, "art_fisher.adversarial", "art_fisher.detection"),
    )
    assert [] in both, f"detection and adversarial import each other: {both}"


def _code_lines(node: ast.AST, lines: list[str]) -> int:
    """Lines of code of a function: neither its docstring nor blank or comment-only lines."""
    skip: set[int] = set()
    body = getattr(node, "body", [])
    doc = body[0] if body and isinstance(body[0], ast.Expr) else None
    if doc is not None and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
        skip.update(range(doc.lineno, doc.end_lineno + 1))
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return sum(
        1
        for number in range(first, node.end_lineno + 1)
        if number not in skip and lines[number - 1].strip() and not lines[number - 1].strip().startswith("#")
    )


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    lines = source.splitlines()
    return [
        (node.name, n)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (n := _code_lines(node, lines)) > limit
    ]


def test_function_length_counts_code_only():
    body = "\n".join(f"    x{i} = {i}" for i in range(81))
    source = f'def f():\n    """Doc.\n\n    More.\n    """\n    # a comment\n\n{body}\n'
    assert long_functions(source) == [("f", 82)]
    assert long_functions(source, limit=82) == []


@pytest.mark.parametrize("name", sorted(_modules()))
def test_function_length(name):
    found = long_functions(_modules()[name].read_text(encoding="utf-8"))
    assert not found, f"{name}: functions over {MAX_FUNCTION_LINES} lines of code: {found}; split them by step."


@pytest.mark.parametrize("name", sorted(_modules()))
def test_all_only_in_package_init(name):
    path = _modules()[name]
    defines_all = any(
        isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign))
        and any(
            isinstance(t, ast.Name) and t.id == "__all__"
            for t in getattr(node, "targets", [getattr(node, "target", None)])
        )
        for node in ast.parse(path.read_text(encoding="utf-8")).body
    )
    assert path.name == "__init__.py" or not defines_all, f"{name} defines __all__; only package __init__ files do."
