"""Before the archive trims the log: keep each still-retained task's events beside it.

A finished task must stay readable whole — ``get``, ``watch``, SSE, WebSocket, gRPC — for its
retention whether or not its part of the log was archived (DESIGN.md §3 invariant 10). The
archive copies each page it is about to trim into ``PartitionKeys.kept`` (one hash field per
task: its entries as JSON, with the log's own ids) for the tasks whose state the engine still
holds; the engine's readers
(``Store.history``) read there first, and the janitor deletes it with the task.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from engine.core.keys import PartitionKeys
from engine.core.scripts import lua_source
from engine.core.store import translate_errors
from projections.script_args import build_keep, parse_count

_KEEP = lua_source("keep", package="projections")


class Keeper:
    """Copies pages of entries about to be archived beside their retained tasks."""

    def __init__(self, redis: aioredis.Redis, keys: PartitionKeys) -> None:
        self.script = redis.register_script(_KEEP)
        self.keys = keys
        self.kept = 0  # entries kept so far

    async def __call__(self, page: Sequence[tuple[str, dict[str, str]]]) -> None:
        call = build_keep(self.keys.state, self.keys.kept, page)
        if call is None:
            return
        keys, argv = call
        with translate_errors():
            self.kept += parse_count(await self.script(keys=keys, args=argv))
