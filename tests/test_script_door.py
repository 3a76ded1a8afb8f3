"""Issue 16 item 2: one typed door between Python and Lua. Every script of the project lives in
its package's ``lua/`` folder and has a builder in that package's ``script_args`` module; a
fixed-arity script reads exactly the KEYS and ARGV its builder produces; and no module calls a
script with a hand-built key or argument list."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from engine.admission import script_args as admission
from projections import script_args as projections
from providers import script_args as providers

ROOT = Path(__file__).resolve().parent.parent
DOORS = {
    "engine/core": "engine.core.script_args",
    "engine/admission": "engine.admission.script_args",
    "providers": "providers.script_args",
    "projections": "projections.script_args",
}
SCRIPTS = sorted(
    path
    for folder in DOORS
    for path in (ROOT / folder / "lua").glob("*.lua")
    if not path.name.startswith("_")
)
# core scripts are named after their verb (build_submit_args, build_fetch ...) and share the
# prelude's 11 + 1 keys and 4 leading ARGV, checked by tests/engine/test_script_args.py
CORE_BUILDERS = {
    "submit": "build_submit_args",
    "commit": "build_commit_args",
    "renew": "build_renew_args",
    "fetch": None,
    "cancel": None,
    "janitor": None,
    "history": None,
}


def test_every_lua_script_is_in_a_door_package_and_has_a_builder() -> None:
    """A script added anywhere else, or without a ``build_<script>`` in its package's door,
    fails here."""
    everywhere = sorted(
        p
        for pkg in ("engine", "providers", "projections", "gateway")
        for p in (ROOT / pkg).rglob("*.lua")
    )
    assert [
        p for p in everywhere if p.parent.parent.relative_to(ROOT).as_posix() not in DOORS
    ] == []
    missing = []
    for path in SCRIPTS:
        folder = path.parent.parent.relative_to(ROOT).as_posix()
        door = importlib.import_module(DOORS[folder])
        name = path.stem
        if folder == "engine/core":
            builder = CORE_BUILDERS.get(name, "missing")
            if builder is None:
                continue  # fixed ARGV documented in engine/core/script_args.py
        else:
            builder = f"build_{name}"
        if not hasattr(door, builder):
            missing.append(f"{path.relative_to(ROOT)} → {DOORS[folder]}.{builder}")
    assert missing == []


def _highest(lua: str, name: str) -> int:
    return max((int(n) for n in re.findall(rf"{name}\[(\d+)\]", lua)), default=0)


FIXED: dict[str, tuple[str, Any]] = {
    "budget_reserve": (
        "engine/admission",
        admission.build_budget_reserve(("h", "s", "d"), 10, 1, "t", 60),
    ),
    "budget_settle": (
        "engine/admission",
        admission.build_budget_settle(("h", "s", "n"), "t", 1, 60, charge=True),
    ),
    "cache_get": ("engine/admission", admission.build_cache_get("e", "l", 1)),
    "cache_put": ("engine/admission", admission.build_cache_put("e", "l", b"v", 1, 1, 5)),
    "template_register": ("engine/admission", admission.build_template_register("k", "b")),
    "breaker_acquire": (
        "providers",
        providers.build_breaker_acquire(providers.BreakerKeys("b", "p"), 1.0, 5.0, 100, "t"),
    ),
    "breaker_fail": (
        "providers",
        providers.build_breaker_fail(providers.BreakerKeys("b", "p"), 1.0, 3),
    ),
    "breaker_settle": (
        "providers",
        providers.build_breaker_settle(providers.BreakerKeys("b", "p"), "closed", 1.0),
    ),
    "breaker_release": (
        "providers",
        providers.build_breaker_release(providers.BreakerKeys("b", "p"), "t"),
    ),
    "breaker_reset": ("providers", providers.build_breaker_reset(providers.BreakerKeys("b", "p"))),
    "ratelimit_block": ("providers", providers.build_ratelimit_block("k", 2, 1)),
    "archive_record": (
        "projections",
        projections.build_archive_record("a", "l", "1-0", 1, 1, "1-1"),
    ),
}


@pytest.mark.parametrize("script", sorted(FIXED))
def test_a_fixed_arity_script_reads_what_its_builder_builds(script: str) -> None:
    """The highest KEYS[n] and ARGV[n] a script reads are the lengths its builder gives: an
    argument added, dropped or moved on one side only fails here."""
    folder, (keys, argv) = FIXED[script]
    lua = (ROOT / folder / "lua" / f"{script}.lua").read_text()
    assert "#ARGV" not in lua and "#KEYS" not in lua
    assert _highest(lua, "KEYS") == len(keys)
    assert _highest(lua, "ARGV") == len(argv)


def test_variable_arity_builders_put_counts_and_strides_where_the_scripts_read_them() -> None:
    """The batch scripts: ratelimit (6 fixed, then pairs), view_save (n first, 6 per shard
    before its pairs), keep (task, id, 2n, pairs), view_swap (4 keys per shard)."""
    keys, argv = providers.build_ratelimit_acquire(
        "r", "t", "b", 5, (1.0, 2.0), (3.0, 4.0), 7, [providers.RateCall(10, 100)] * 2
    )
    rl = (ROOT / "providers/lua/ratelimit_acquire.lua").read_text()
    assert "for i = 7, #ARGV, 2 do" in rl and len(keys) == _highest(rl, "KEYS") == 3
    assert argv == [5, 1.0, 2.0, 3.0, 4.0, 7, 10, 100, 10, 100]
    shard = projections.ShardSave("v", "m", "g 1-0", "2-0", 1, 9, [("k", b"{}")], ["x"])
    keys, argv = projections.build_view_save([shard, shard])
    assert keys == ["v", "m", "v", "m"]
    assert argv[:8] == [2, "g 1-0", "2-0", 1, 9, 1, 1, "k"] and len(argv) == 1 + 2 * 9
    vs = (ROOT / "projections/lua/view_save.lua").read_text()
    assert "i = i + 6 + nset * 2 + ndel" in vs
    assert projections.parse_view_save([b"2"]) == [1]
    call = projections.build_keep("s", "k", [("1-0", {"task": "t1", "type": "X"}), ("2-0", {})])
    assert call == (["s", "k"], ["t1", "1-0", 4, "task", "t1", "type", "X"])
    assert projections.build_keep("s", "k", [("2-0", {"type": "X"})]) is None
    assert projections.build_view_swap([("a", "b", "c", "d")]) == (["a", "b", "c", "d"], [])


PACKAGES = ("engine", "providers", "projections", "gateway")
HAND_BUILT = re.compile(r"\b(keys|args)=\[")


def test_no_module_calls_a_script_with_a_hand_built_list() -> None:
    """Scripts are called with what a builder returned (``keys=keys, args=argv``), never with a
    list spelled at the call site."""
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if p.name != "script_args.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if HAND_BUILT.search(line)
    ]
    assert found == []


def test_the_hand_built_detector_catches_a_call_site_list() -> None:
    assert HAND_BUILT.search("await self._reset(keys=[k], args=[])")
    assert not HAND_BUILT.search("await self._reset(keys=keys, args=argv)")
