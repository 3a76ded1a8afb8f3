"""The one loader of Lua scripts: every script of the project is a file in a ``lua/`` folder of its
package (engine/core/lua, engine/admission/lua, projections/lua; providers/ has its own copy of
this loader because it may import nothing of the others). A script is registered from
``lua_source(name, package=...)``; the event-log scripts of the store get ``_prelude.lua``
(shared helpers) in front with ``prelude=True``."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def lua_source(name: str, *, package: str = "engine.core", prelude: bool = False) -> str:
    """The text of ``<package>/lua/<name>.lua``, behind ``_prelude.lua`` when ``prelude``."""
    folder = resources.files(package) / "lua"
    body = (folder / f"{name}.lua").read_text()
    return (folder / "_prelude.lua").read_text() + "\n" + body if prelude else body
