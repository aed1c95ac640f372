"""fastgpt's modules import one another without cycles, function-level imports included.

Every ``import`` statement anywhere in a module (top level, inside functions and classes) is an
edge; imports under ``if TYPE_CHECKING:`` are left out, since they never run. Importing
``fastgpt.data.loader`` from outside ``fastgpt.data`` first runs ``fastgpt/data/__init__.py``, so such
an import is also an edge to each package above the module imported, except the root ``fastgpt``,
which every module sits under and whose ``__init__`` is the first thing any import of fastgpt runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fastgpt

ROOT = Path(fastgpt.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(name: str, tree: ast.AST) -> set[str]:
    """The fastgpt modules that the module ``name`` (parsed as ``tree``) imports."""
    found: set[str] = set()
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # from pkg import submodule
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    parents = set()
    for module in found:  # importing a.b.c from outside package a.b first runs a.b's __init__
        parts = module.split(".")
        parents.update(p for p in (".".join(parts[:n]) for n in range(2, len(parts)))
                       if not (name == p or name.startswith(p + ".")))
    # ``from fastgpt import x`` imports the root package, whose __init__ every fastgpt module ran first
    return {m for m in found | parents if m in MODULES and m not in (name, "fastgpt")}


def import_graph() -> dict[str, set[str]]:
    return {name: _imported(name, ast.parse(path.read_text(), str(path))) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)):
            return cycle
    return None


def test_the_walk_sees_function_level_imports() -> None:
    graph = import_graph()
    assert "fastgpt.model" in graph["fastgpt"]  # top level
    assert "fastgpt.checkpoint" in graph["fastgpt"]  # inside fastgpt.load
    assert "fastgpt.nn" in graph["fastgpt.model"]  # the package above fastgpt.nn.attention, which it imports
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_model_reaches_neither_data_nor_training_nor_eval() -> None:
    """The layers run ops -> nn -> model -> data, train, eval, hf; the model's only imports upward are the
    thin entry points ``GPT.from_hf``/``to_hf`` (into ``fastgpt.hf.convert``, which never imports the
    model back: ``test_no_import_cycles``)."""
    graph = import_graph()
    reach, todo = set(), ["fastgpt.model"]
    while todo:
        for nxt in graph[todo.pop()] - reach:
            reach.add(nxt)
            todo.append(nxt)
    banned = sorted(m for m in reach if m.startswith(("fastgpt.train", "fastgpt.eval", "fastgpt.data")))
    assert not banned, f"fastgpt.model reaches {banned}"


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


INFERENCE = ("fastgpt", "fastgpt.checkpoint", "fastgpt.generate", "fastgpt.eval", "fastgpt.hf")


def test_loading_generating_evaluating_and_exporting_reach_nothing_of_training() -> None:
    """``fastgpt.load`` (fastgpt.checkpoint), generate, eval and hf sit beside train, not above it: none of
    them imports ``fastgpt.train``, however indirectly (function-level imports included); what both need
    (the run folder's layout, LoRA checkpoints, memory checks, progress bars) lives below both."""
    graph = import_graph()
    starts = [m for m in graph if m in INFERENCE or m.startswith(tuple(f"{p}." for p in INFERENCE[1:]))]
    assert "fastgpt.eval.evaluate" in starts and "fastgpt.hf.export" in starts
    reached = {m: sorted(r for r in _reach(graph, m) if r.startswith("fastgpt.train")) for m in starts}
    bad = {m: r for m, r in reached.items() if r}
    assert not bad, f"these reach fastgpt.train: {bad}"
