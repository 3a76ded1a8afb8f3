"""Loader of providers/' Lua scripts (``providers/lua/<name>.lua``), the same as
``engine/core/scripts.py``: providers/ imports nothing of the other packages, so it keeps its
own."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def lua_source(name: str) -> str:
    """The text of ``providers/lua/<name>.lua``."""
    return (resources.files("providers") / "lua" / f"{name}.lua").read_text()
