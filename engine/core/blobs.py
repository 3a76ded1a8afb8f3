"""Large results out of line: a result text over ``threshold_bytes`` is stored under its own
key with a TTL and the event carries a ``ResultRef`` instead; ``load`` gets it back. The key is
built from a caller-supplied hash tag (the task's partition tag, e.g. ``aiis:{p3}``), so it
lives in the task's Redis Cluster slot and can be written by the same atomic script as the
event."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis.asyncio as aioredis

from engine.core.keys import blob_key
from engine.core.store import translate_errors
from engine.errors import ResultGone


@dataclass(frozen=True, slots=True)
class ResultRef:
    """Where an out-of-line result lives; goes into the event instead of the text."""

    key: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, object]:
        return {"key": self.key, "size": self.size, "sha256": self.sha256}


class Offloader:
    """Stores results over ``threshold_bytes`` under their own key (with a TTL)."""

    def __init__(
        self, redis: aioredis.Redis, *, threshold_bytes: int = 64 * 1024, ttl_s: int = 86_400
    ) -> None:
        self.redis = redis
        self.threshold_bytes = threshold_bytes
        self.ttl_s = ttl_s

    def needs_offload(self, text: str) -> bool:
        return len(text.encode()) > self.threshold_bytes

    async def store(
        self, hash_tag_prefix: str, task_id: str, attempt: int, text: str
    ) -> ResultRef | None:
        """A reference when ``text`` was stored out of line; None when it is small enough to
        stay in the event."""
        data = text.encode()
        if len(data) <= self.threshold_bytes:
            return None
        key = blob_key(hash_tag_prefix, task_id, attempt)
        with translate_errors():
            await self.redis.set(key, data, ex=self.ttl_s)
        return ResultRef(key, len(data), hashlib.sha256(data).hexdigest())

    async def load(self, ref: ResultRef) -> str:
        """The stored text; ``ResultGone`` when expired, or when it does not match its hash."""
        with translate_errors():
            data = await self.redis.get(ref.key)
        raw = data.encode() if isinstance(data, str) else data
        if raw is None or hashlib.sha256(raw).hexdigest() != ref.sha256:
            raise ResultGone(ref.key)
        return raw.decode()
