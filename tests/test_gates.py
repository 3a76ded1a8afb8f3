"""Static gates that keep the codebase honest: lint, format, strict typing, import direction."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_PORTS

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "providers", "projections", "gateway")
# package -> packages it must never import (DESIGN.md §2: gateway → engine ← projections;
# engine → providers; providers imports nothing of the others; nothing imports gateway)
FORBIDDEN = {
    "providers": {"engine", "projections", "gateway"},
    "engine": {"projections", "gateway"},
    "projections": {"gateway"},
    "gateway": set(),
}

pytestmark = pytest.mark.gates


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_lint_is_clean() -> None:
    """ruff finds nothing in the packages, tests and benchmarks."""
    result = _run("ruff", "check", *PACKAGES, "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean() -> None:
    """The code is formatted as ruff formats it."""
    result = _run("ruff", "format", "--check", *PACKAGES, "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(600)
def test_mypy_strict_is_clean() -> None:
    """mypy --strict passes on every package."""
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_dependencies_point_one_way(package: str) -> None:
    """No module imports a package its layer must not depend on."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
        if _imports(path) & FORBIDDEN[package]
    }
    assert offenders == {}


def test_default_ports_are_taken_while_the_suite_runs(default_ports_taken: list[int]) -> None:
    """The suite runs with 8765, 50051 and 6379 occupied (tests/conftest.py), so no test can
    pass only because a default port happened to be free."""
    for port in DEFAULT_PORTS:
        with socket.socket() as sock, pytest.raises(OSError):
            sock.bind(("127.0.0.1", port))


def _inline_lua(path: Path) -> list[int]:
    """Lines of ``path`` where a string constant holds Lua (a ``redis.call``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and ("redis.call(" in node.value or "redis.pcall(" in node.value)
    ]


def test_every_lua_script_lives_in_a_lua_folder() -> None:
    """No .lua file sits outside a package's lua/ folder and no Python module holds inline Lua,
    so every script is loaded the same way (issue 16 item 2)."""
    stray_files = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.lua")
        if path.parent.name != "lua"
    ]
    inline = {
        str(path.relative_to(ROOT)): lines
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if (lines := _inline_lua(path))
    }
    assert stray_files == []
    assert inline == {}


def test_state_letters_are_spelled_only_in_the_state_code_enum() -> None:
    """The terminal state letters live in engine/core/events.py StateCode/TERMINAL_CODES alone: no
    other module spells them as a string (issue 16 item 2)."""
    letters = set("SFXC")
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and len(node.value) == 4
        and set(node.value) == letters
    ]
    assert offenders == []
