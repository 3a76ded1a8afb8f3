"""Gate: every exception class of the four packages lives in its package's ``errors.py``, derives
from the package root and sits, under its real parent, in the tree drawn in that docstring."""

from __future__ import annotations

import ast
import builtins
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# package -> the class every exception it defines must derive from
ROOTS = {
    "engine": "EngineError",
    "projections": "ProjectionError",
    "providers": "ProviderError",
    "gateway": "GatewayError",
}
_BUILTIN = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}
_FOREIGN_SUFFIXES = ("Error", "Exception", "Exit", "Interrupt", "Warning")
# one line of a drawn tree: ``├── Name`` (or the root at its own column), then its description
_NODE = re.compile(r"^(?P<prefix>[\s│]*(?:[├└]── )?)(?P<name>[A-Z][A-Za-z0-9_]*)\b")

pytestmark = pytest.mark.gates


def _classes(package: str) -> list[tuple[str, ast.ClassDef]]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        found += [
            (str(path.relative_to(ROOT)), n) for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
        ]
    return found


def _exception_classes() -> list[tuple[str, str, str]]:
    """``(package, file, class)`` of every class that is an exception, by name resolution over
    the four packages (builtins, foreign ``…Error`` bases and the packages' own classes)."""
    every = [(pkg, f, c) for pkg in ROOTS for f, c in _classes(pkg)]
    known: set[str] = set(_BUILTIN)
    found: dict[tuple[str, str], str] = {}
    changed = True
    while changed:
        changed = False
        for pkg, file, cls in every:
            if (file, cls.name) in found:
                continue
            for base in map(ast.unparse, cls.bases):
                last = base.rsplit(".", 1)[-1]
                foreign = "." in base and last.endswith(_FOREIGN_SUFFIXES)
                if last in known or foreign:
                    found[(file, cls.name)] = pkg
                    known.add(cls.name)
                    changed = True
                    break
    return sorted((pkg, file, name) for (file, name), pkg in found.items())


def test_every_exception_lives_in_errors_py() -> None:
    """No exception class is defined outside its package's top-level errors.py."""
    outside = [
        f"{file}: {name}"
        for package, file, name in _exception_classes()
        if file != f"{package}/errors.py"
    ]
    assert outside == [], "exception classes outside errors.py:\n" + "\n".join(outside)


def _tree(doc: str, names: set[str]) -> dict[str, str | None]:
    """Each class drawn in ``doc`` -> the class drawn as its parent (None for the top)."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        match = _NODE.match(line)
        if match is None or match["name"] not in names:
            continue
        column = len(match["prefix"])
        while stack and stack[-1][0] >= column:
            stack.pop()
        parents[match["name"]] = stack[-1][1] if stack else None
        stack.append((column, match["name"]))
    return parents


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_errors_py_tree_is_complete(package: str) -> None:
    """Every exception in errors.py derives from the package root and is drawn in the module
    docstring under its real parent class."""
    module = importlib.import_module(f"{package}.errors")
    root = getattr(module, ROOTS[package])
    classes = {
        name: value
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    }
    names = set(classes) | {b.__name__ for c in classes.values() for b in c.__mro__}
    drawn = _tree(module.__doc__ or "", names)
    problems = []
    for name, cls in sorted(classes.items()):
        where = f"{package}/errors.py: {name}"
        if not issubclass(cls, root):
            problems.append(f"{where} does not derive from {ROOTS[package]}")
        if name not in drawn:
            problems.append(f"{where} is missing from the docstring tree")
        elif cls is not root and drawn[name] != cls.__bases__[0].__name__:
            problems.append(
                f"{where} is drawn under {drawn[name]}, derives from {cls.__bases__[0].__name__}"
            )
    assert problems == [], "\n".join(problems)
