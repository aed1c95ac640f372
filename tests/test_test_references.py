"""Every fastgpt name the tests use exists, in the tests that run only on a GPU too.

A test skipped here ("needs a CUDA device") never runs on CPU: a name removed from fastgpt would
show only on a GPU, as an AttributeError. So this reads the source of every test file and resolves
each fastgpt reference in it against the real modules:

- ``import fastgpt.x as y`` and ``from fastgpt.x import a``, in functions too;
- attribute chains on names bound to fastgpt modules or classes (``ops.rms_norm``,
  ``GPT.from_preset``), through assignments and through local helpers that return a module;
- ``importlib.import_module("fastgpt...")``; in an f-string each field stands for one name
  component, so ``f"fastgpt.ops.{name}.rms_norm"`` means every module it matches, and an attribute
  used on the result must exist in each;
- ``torch.ops.fastgpt.<op>``, once the kernels of every backend available here are loaded;
- ``getattr(x, "name")`` and ``monkeypatch.setattr(x, "name", ...)`` with a constant name.

A chain stops at anything that is not a module or a class (what a function returns is not known
from its source), and a name rebound to something else in a function is not followed there.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
from functools import cache
from pathlib import Path
from types import ModuleType

import torch

import fastgpt
from fastgpt.ops._backend import unavailable_reason
from fastgpt.ops._registry import KERNEL_BACKENDS, OPS, kernel

TESTS = Path(__file__).parent
Ref = list[tuple[str, object]]  # (dotted name as written, the object it names): several for a pattern


@cache
def _module_names() -> tuple[str, ...]:
    return ("fastgpt", *(m.name for m in pkgutil.walk_packages(fastgpt.__path__, "fastgpt.")))


@cache
def _torch_ops_fastgpt() -> object:
    """``torch.ops.fastgpt`` with the ops of every kernel module of the backends available here."""
    for backend in KERNEL_BACKENDS:
        if unavailable_reason(backend, torch.device("cpu")) is None:
            for op in OPS:
                kernel(backend, op)
    return torch.ops.fastgpt


def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            return None
        raise


def _attribute(obj: object, attr: str) -> tuple[bool, object | None]:
    """(whether ``obj`` has ``attr``, the value where the chain goes on: a module or a class, else None)."""
    if isinstance(obj, ModuleType):
        if hasattr(obj, attr):
            value = getattr(obj, attr)
        else:
            value = _import(f"{obj.__name__}.{attr}")
            if value is None:
                return False, None
        return True, value if isinstance(value, (ModuleType, type)) else None
    if isinstance(obj, type):
        declared = any(attr in vars(c).get("__annotations__", {}) for c in obj.__mro__)
        if dataclasses.is_dataclass(obj):
            declared = declared or attr in {f.name for f in dataclasses.fields(obj)}
        if not (hasattr(obj, attr) or declared):
            return False, None
        value = inspect.getattr_static(obj, attr, None)
        return True, value if isinstance(value, (ModuleType, type)) else None
    if obj is _torch_ops_fastgpt():
        return hasattr(obj, attr), None
    return True, None


class _Checker(ast.NodeVisitor):
    """Walks one file with the fastgpt names bound in each scope; collects the ones that do not resolve."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.problems: dict[str, None] = {}
        self.env: dict[str, Ref] = {}
        self.helpers: dict[str, ast.expr] = {}  # local function -> the expression it returns

    def problem(self, node: ast.AST, text: str) -> None:
        self.problems[f"{self.label}:{node.lineno}: {text}"] = None

    # ---- evaluating an expression to the fastgpt objects it names ----

    def resolve(self, ref: Ref, attr: str, node: ast.AST) -> Ref | None:
        out: Ref = []
        for name, obj in ref:
            found, value = _attribute(obj, attr)
            if not found:
                self.problem(node, f"{name}.{attr} does not exist")
            out.append((f"{name}.{attr}", value))
        return None if any(value is None for _, value in out) else out

    def module_pattern(self, node: ast.expr) -> Ref | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if not node.value.startswith("fastgpt"):
                return None
            module = _import(node.value)
            if module is None:
                self.problem(node, f"module {node.value} does not exist")
                return None
            return [(node.value, module)]
        if isinstance(node, ast.JoinedStr):
            parts = [re.escape(v.value) if isinstance(v, ast.Constant) else "[A-Za-z0-9_]+" for v in node.values]
            pattern = "".join(parts)
            if not pattern.startswith("fastgpt"):
                return None
            names = [n for n in _module_names() if re.fullmatch(pattern, n)]
            if not names:
                self.problem(node, f"no module matches {ast.unparse(node)}")
                return None
            return [(n, importlib.import_module(n)) for n in names]
        return None

    def evaluate(self, node: ast.expr) -> Ref | None:
        if isinstance(node, ast.Name):
            return self.env.get(node.id)
        if isinstance(node, ast.Attribute) and ast.unparse(node) == "torch.ops.fastgpt":
            return [("torch.ops.fastgpt", _torch_ops_fastgpt())]
        if isinstance(node, ast.Attribute):
            base = self.evaluate(node.value)
            return None if base is None else self.resolve(base, node.attr, node)
        if isinstance(node, ast.Call) and node.args:
            callee = ast.unparse(node.func)
            if callee in ("importlib.import_module", "import_module"):
                return self.module_pattern(node.args[0])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.helpers:
            return self.evaluate(self.helpers[node.func.id])
        return None

    # ---- scopes ----

    def bind_imports(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "fastgpt":
                    continue
                module = _import(alias.name)
                if module is None:
                    self.problem(node, f"module {alias.name} does not exist")
                elif alias.asname:
                    self.env[alias.asname] = [(alias.name, module)]
                else:
                    self.env["fastgpt"] = [("fastgpt", fastgpt)]
            return
        if node.level or not node.module or node.module.split(".")[0] != "fastgpt":
            return
        base = self.module_pattern(ast.copy_location(ast.Constant(node.module), node))
        for alias in node.names:
            if base is None or alias.name == "*":
                continue
            value = self.resolve(base, alias.name, node)
            self.env[alias.asname or alias.name] = value if value is not None else []

    def scope(self, body: list[ast.stmt], shadowed: set[str]) -> None:
        """Visit ``body`` with the enclosing bindings, less ``shadowed``, plus its own imports and assignments."""
        saved_env, saved_helpers = self.env, self.helpers
        self.env = {k: v for k, v in self.env.items() if k not in shadowed}
        self.helpers = dict(self.helpers)
        stored = {n.id for stmt in body for n in ast.walk(stmt) if isinstance(n, ast.Name)
                  and isinstance(n.ctx, ast.Store)}
        for name in stored:  # anything else assigned to the name is not followed
            self.env.pop(name, None)
        for stmt in body:
            self.bind_statement(stmt)
        for stmt in body:
            self.visit(stmt)
        self.env, self.helpers = saved_env, saved_helpers

    def bind_statement(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            self.bind_imports(stmt)
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            value = self.evaluate(stmt.value)
            if value is not None:
                self.env[stmt.targets[0].id] = value
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            returns = [n for n in ast.walk(stmt) if isinstance(n, ast.Return) and n.value is not None]
            if len(returns) == 1:
                self.helpers[stmt.name] = returns[0].value
        elif isinstance(stmt, (ast.If, ast.Try, ast.With)):
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.stmt):
                    self.bind_statement(child)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        args = node.args
        params = {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg) if a}
        self.scope(node.body, params)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        params = {a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)}
        self.scope([ast.Expr(node.body, lineno=node.lineno, col_offset=0)], params)

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        pass  # bound (and checked) by the scope

    visit_ImportFrom = visit_Import

    # ---- the references ----

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, ast.Load):
            self.evaluate(node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        self.evaluate(node)
        callee = ast.unparse(node.func)
        named = len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
        raising = all(not (k.arg == "raising" and isinstance(k.value, ast.Constant) and k.value.value is False)
                      for k in node.keywords)
        if named and (callee == "getattr" and len(node.args) == 2 or callee.endswith(".setattr") and raising):
            base = self.evaluate(node.args[0])
            if base is not None:
                self.resolve(base, node.args[1].value, node)
        elif callee.endswith(".setattr") and raising and node.args and isinstance(node.args[0], ast.Constant):
            target = node.args[0].value
            if isinstance(target, str) and target.startswith("fastgpt."):
                module, _, attr = target.rpartition(".")
                base = self.module_pattern(ast.copy_location(ast.Constant(module), node))
                if base is not None:
                    self.resolve(base, attr, node)
        self.generic_visit(node)


def stale_references(source: str, label: str) -> list[str]:
    """``label:line: what`` for every fastgpt name in ``source`` that does not exist."""
    checker = _Checker(label)
    checker.scope(ast.parse(source).body, set())
    return list(checker.problems)


def test_every_fastgpt_name_used_by_a_test_exists() -> None:
    problems = [p for path in sorted(TESTS.rglob("*.py"))
                for p in stale_references(path.read_text(), str(path.relative_to(TESTS)))]
    assert not problems, "\n".join(problems)


_STALE = '''
import importlib
import pytest, torch
import fastgpt.ops as ops
from fastgpt.ops import reference
from fastgpt.model import GPT, Gone

def _kernel(name):
    return importlib.import_module(f"fastgpt.ops.{name}.rms_norm")

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu(name, monkeypatch):
    from fastgpt.ops.cuda.rms_norm import unsupported_reason, gone_too
    rms_norm = _kernel(name).rms_norm
    kernel = importlib.import_module(f"fastgpt.ops.{name}.flash_attention").flash_attention
    ops.rms_norm(1), reference.flash_attention(2), GPT.from_preset
    ops.rms_norm_fused(1)
    torch.ops.fastgpt.rms_norm_fwd, torch.ops.fastgpt.no_such_op
    getattr(ops, "no_attr"), GPT.num_params, GPT.no_method
    monkeypatch.setattr("fastgpt.ops.autotune.no_knob", 1)
    importlib.import_module(f"fastgpt.nope.{name}")
'''


def test_the_check_finds_stale_names_in_a_gpu_only_test() -> None:
    """The names removed from fastgpt that GPU-only tests once used, and more ways to reach one."""
    found = "\n".join(stale_references(_STALE, "planted"))
    for stale in ("fastgpt.model.Gone", "fastgpt.ops.cuda.rms_norm.gone_too",
                  "fastgpt.ops.triton.rms_norm.rms_norm", "fastgpt.ops.cuda.rms_norm.rms_norm",
                  "fastgpt.ops.triton.flash_attention.flash_attention", "fastgpt.ops.rms_norm_fused",
                  "torch.ops.fastgpt.no_such_op", "fastgpt.ops.no_attr", "fastgpt.model.GPT.no_method",
                  "fastgpt.ops.autotune.no_knob", "no module matches f'fastgpt.nope.{name}'"):
        assert stale in found, f"{stale} not reported:\n{found}"
    for fine in ("unsupported_reason ", ".rms_norm_fwd ", "reference.flash_attention", "from_preset", "num_params"):
        assert fine not in found + " ", found
