"""Gate: settings are parsed once per process, at the composition roots, and passed down."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "providers", "projections", "gateway")
# every BaseSettings class of the project (engine/settings.py, projections/settings.py,
# providers/config.py, gateway/settings.py, gateway/grpc/settings.py)
SETTINGS_CLASSES = {
    "Settings",
    "ProjectionSettings",
    "ProviderSettings",
    "GatewaySettings",
    "GrpcSettings",
}
# the composition roots: the process entry points, which parse settings once and pass them down
ROOT_FILES = {
    "engine/runtime/cli.py",
    "engine/runtime/commands.py",
    "engine/runtime/serving.py",
    "engine/runtime/workers.py",
    "gateway/cli.py",
    "gateway/grpc/cli.py",
    "projections/cli.py",
    "providers/sandbox/__main__.py",
}
# (file, function) roots inside library modules: the public door parses once for its caller
ROOT_FUNCTIONS = {("engine/client.py", "from_url")}
# the modules that read the environment into settings (os.environ is read only there and in roots)
SETTINGS_MODULES = {
    "engine/settings.py",
    "projections/settings.py",
    "providers/config.py",
    "gateway/settings.py",
    "gateway/grpc/settings.py",
}

pytestmark = pytest.mark.gates


def _name(node: ast.expr) -> str | None:
    """The class a name or a dotted path of ours names (``h2.settings.Settings`` is not ours)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = node.value
        while isinstance(base, ast.Attribute):
            base = base.value
        if isinstance(base, ast.Name) and base.id not in {*PACKAGES, "settings", "config"}:
            return None
        return node.attr
    return None


def _violations(path: Path, rel: str) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                if default is not None and _name(default) in SETTINGS_CLASSES:
                    found.append(f"{rel}:{default.lineno}: {_name(default)} as a default")
        allowed = rel in ROOT_FILES or (rel, function) in ROOT_FUNCTIONS
        if isinstance(node, ast.Call) and not allowed:
            if _name(node.func) in SETTINGS_CLASSES:
                found.append(f"{rel}:{node.lineno}: {_name(node.func)}() outside a root")
            for kw in node.keywords:
                if kw.arg == "default_factory" and _name(kw.value) in SETTINGS_CLASSES:
                    found.append(f"{rel}:{node.lineno}: default_factory={_name(kw.value)}")
        if (
            isinstance(node, ast.Attribute)
            and node.attr in {"environ", "getenv", "environb", "getenvb"}
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and rel not in ROOT_FILES
            and rel not in SETTINGS_MODULES
        ):
            found.append(f"{rel}:{node.lineno}: os.{node.attr} outside a settings module or root")
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, None)
    return found


def test_settings_are_constructed_only_at_composition_roots() -> None:
    """No `<Name>Settings(` call, settings-class default or os.environ read below the roots."""
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += _violations(path, path.relative_to(ROOT).as_posix())
    assert not found, "settings parsed outside a composition root:\n" + "\n".join(found)


def test_gate_flags_a_construction_below_the_roots(tmp_path: Path) -> None:
    """The gate sees a construction, a default_factory, a class default and an os.environ read."""
    path = tmp_path / "m.py"
    path.write_text(
        "import os\n"
        "from pydantic import Field\n"
        "def f(s=ProviderSettings):\n"
        "    x = Field(default_factory=GatewaySettings)\n"
        "    return s or engine.settings.Settings(), os.getenv('X')\n"
    )
    found = _violations(path, "engine/m.py")
    assert [line.split(": ", 1)[0] for line in found] == [
        "engine/m.py:3",
        "engine/m.py:4",
        "engine/m.py:5",
        "engine/m.py:5",
    ]
