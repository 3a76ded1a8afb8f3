"""Gate: Redis key names are built only in the key modules (issue 16 item 3)."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "providers", "projections", "gateway")
KEY_MODULES = frozenset({"engine/core/keys.py", "projections/keys.py", "providers/keys.py"})
# a literal that spells a key of the service: a hash tag (`:{`, `{p3}`) or the default namespace
KEY_LITERAL = re.compile(r":\{|\{p\d|\{p<|\baiis:[a-z{]")
# an f-string that appends a key segment to a formatted value: f"{namespace}:audit"
KEY_SEGMENT = re.compile(r"^:[a-z_*]")

# a string literal handed to Redis as a key: the first argument of a key command on an object
# named like a Redis client or pipeline, or an element of a script call's ``keys=[…]``
KEY_COMMANDS = frozenset(
    [
        "get",
        "set",
        "getdel",
        "delete",
        "unlink",
        "exists",
        "expire",
        "pexpire",
        "ttl",
        "pttl",
        "type",
        "rename",
        "incr",
        "incrby",
        "hget",
        "hset",
        "hmget",
        "hgetall",
        "hdel",
        "hincrby",
        "hlen",
        "hkeys",
        "hexists",
        "sadd",
        "srem",
        "smembers",
        "zadd",
        "zrem",
        "zrange",
        "zrangebyscore",
        "zscore",
        "zcard",
        "xadd",
        "xrange",
        "xrevrange",
        "xlen",
        "xtrim",
        "xdel",
        "xgroup_create",
        "xreadgroup",
        "xautoclaim",
        "xack",
        "xpending_range",
        "xinfo_stream",
        "scan_iter",
    ]
)
CLIENT_NAME = re.compile(r"redis|pipe", re.IGNORECASE)

pytestmark = pytest.mark.gates


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


def _redis_key_arguments(tree: ast.AST) -> list[int]:
    """Lines where a literal string is passed to Redis as a key."""
    lines: list[int] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr in KEY_COMMANDS
            and CLIENT_NAME.search(ast.unparse(func.value))
            and node.args
            and _is_text(node.args[0])
        ):
            lines.append(node.lineno)
        for kw in node.keywords:
            if (
                kw.arg == "keys"
                and isinstance(kw.value, ast.List | ast.Tuple)
                and any(_is_text(e) for e in kw.value.elts)
            ):
                lines.append(node.lineno)
    return lines


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (documentation may show key names)."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def key_literals(source: str, filename: str = "<src>") -> list[int]:
    """Line numbers of string literals and f-strings in ``source`` that look like Redis keys."""
    tree = ast.parse(source, filename=filename)
    skip = _docstrings(tree)
    lines: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = node.values
            for prev, part in itertools.pairwise(parts):
                if (
                    isinstance(prev, ast.FormattedValue)
                    and isinstance(part, ast.Constant)
                    and isinstance(part.value, str)
                    and KEY_SEGMENT.match(part.value)
                ):
                    lines.append(node.lineno)
                    break
            else:
                text = "".join(
                    p.value
                    for p in parts
                    if isinstance(p, ast.Constant) and isinstance(p.value, str)
                )
                if KEY_LITERAL.search(text):
                    lines.append(node.lineno)
            for p in parts:
                skip.add(id(p))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and KEY_LITERAL.search(node.value)
        ):
            lines.append(node.lineno)
    return sorted(set(lines) | set(_redis_key_arguments(tree)))


def _offenders() -> list[str]:
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in KEY_MODULES:
                continue
            found += [f"{rel}:{line}" for line in key_literals(path.read_text(), rel)]
    return found


def test_no_redis_key_literal_outside_the_key_modules() -> None:
    """No module of the four packages but a keys.py spells a Redis key name (file:line named)."""
    assert _offenders() == []


@pytest.mark.parametrize(
    "source",
    [
        'k = f"{namespace}:audit"',
        'k = f"{ns}:{{cache:{n}}}"',
        'LOG = "aiis:{p0}:log"',
        'k = f"{tag}:result:{task}:{attempt}"',
        'await self.redis.xadd("events", {})',
        'await script(keys=[f"{ns}-lock"], args=[])',
    ],
)
def test_the_gate_catches_a_key_literal(source: str) -> None:
    """The detector flags each way a key was spelled ad hoc before the key modules owned them."""
    assert key_literals(source) == [1]


@pytest.mark.parametrize(
    "source",
    [
        'm = f"budget {where}: expected a number"',
        'def f():\n    """keys look like ``aiis:{p3}:log``."""',
        'm = f"{e.id} {when} tenant={e.tenant}"',
        'v = error.get("message")',
    ],
)
def test_the_gate_leaves_messages_and_docstrings_alone(source: str) -> None:
    """Error messages and docstrings that merely mention a key are not key literals."""
    assert key_literals(source) == []


# a Lua script deriving a key from another: appending ":segment" to a name, or cutting a key
LUA_DERIVED_KEY = re.compile(r"""\.\.\s*['"]:|string\.sub\(\s*(KEYS\[|K_)""")


def lua_derived_keys(source: str) -> list[int]:
    """Line numbers of ``source`` (Lua) where a key is derived from another by string handling."""
    return [
        n
        for n, line in enumerate(source.splitlines(), 1)
        if LUA_DERIVED_KEY.search(line.split("--", 1)[0])
    ]


def _lua_offenders() -> list[str]:
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.lua")):
            rel = path.relative_to(ROOT).as_posix()
            found += [f"{rel}:{line}" for line in lua_derived_keys(path.read_text())]
    return found


def test_no_lua_script_derives_a_key() -> None:
    """No Lua script builds a key name from another; keys come from the Python key builders."""
    assert _lua_offenders() == []


@pytest.mark.parametrize(
    ("source", "lines"),
    [
        ("local K_TAG = string.sub(K_LOG, 1, -5)", [1]),
        ("redis.call('HGET', K_TAG .. ':kept', id)", [1]),
        ("local p = string.sub(KEYS[1], 1, -7)", [1]),
        ("-- K_TAG .. ':kept' is built in Python\nredis.call('HGET', KEYS[12], id)", []),
        ("local s = 'a' .. ARGV[2] .. '|' .. b", []),
    ],
)
def test_the_lua_gate_catches_a_derived_key(source: str, lines: list[int]) -> None:
    """The Lua detector flags key derivation by concatenation or cutting, not comments or data."""
    assert lua_derived_keys(source) == lines
