"""Where a task's PII restore mapping lives: its own Redis key with a TTL, never an event.

Events carry the redacted text only (DESIGN.md §3 invariant 7), so replaying or exporting the
log never reveals the values; deleting the vault key (or letting it expire) makes a task's
values unrecoverable. The key carries the task's partition hash tag, so the submit script can
write it in the same atomic step as ``TaskRequested``.
"""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from engine.core.keys import vault_key
from engine.core.store import translate_errors


class PiiVault:
    """Fetches restore mappings (placeholder -> value); submit.lua writes them with their TTL."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def get(self, hash_tag_prefix: str, task_id: str) -> dict[str, str]:
        """The mapping, or ``{}`` when there is none (policy off, no PII, or expired)."""
        with translate_errors():
            raw = await self.redis.get(vault_key(hash_tag_prefix, task_id))
        return dict(orjson.loads(raw)) if raw else {}
