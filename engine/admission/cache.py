"""Result cache: an identical request within the TTL gets the stored result instead of a call.

"Identical" is decided by ``request_key``: the tenant, kind, whitespace-normalised prompt (or
chat messages), params as canonical JSON (sorted keys; ``cache`` and other engine-only params
left out) and the provider chain. Entries are scoped per tenant by default: a shared cache
would let one tenant learn what another asked (by timing or a zero cost) and hand it another
tenant's answer. Keyed on the PII-redacted input, two requests that differ only in redacted
values share an entry, and each caller gets its own values back through ``redaction.restore``.

A task opts out with ``params: {"cache": false}``.

Bounds: every entry has a TTL, and each of ``shards`` sorted-set indexes (score = last use)
keeps at most ``max_entries / shards`` entries, evicting the least recently used on insert.
That bound holds whatever Redis' ``maxmemory`` policy is. The keys of one shard share a hash
tag, so the Lua scripts run on one Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine.admission.script_args import build_cache_get, build_cache_put, parse_cache_put
from engine.core.keys import cache_keys
from engine.core.scripts import lua_source
from engine.core.store import translate_errors

ENGINE_PARAMS = frozenset({"cache", "callback_url", "template", "template_version"})
_WS = re.compile(r"\s+")

# KEYS: entry, index. ARGV: member, value, ttl_ms, now_ms, max_entries
_PUT = lua_source("cache_put", package="engine.admission")
# KEYS: entry, index. ARGV: member, now_ms
_GET = lua_source("cache_get", package="engine.admission")


def normalise_text(text: str) -> str:
    return _WS.sub(" ", text).strip()


def request_key(
    tenant: str,
    kind: str,
    input: str | Sequence[Mapping[str, str]],
    params: Mapping[str, Any],
    chain: Sequence[str],
    *,
    shared: bool = False,
) -> str:
    """The cache key (sha256 hex) of a request; equal for requests that only differ in
    whitespace, dict key order or engine-only params."""
    if isinstance(input, str):
        norm_input: Any = normalise_text(input)
    else:
        norm_input = [[m["role"], normalise_text(m["content"])] for m in input]
    doc = {
        "tenant": None if shared else tenant,
        "kind": kind,
        "input": norm_input,
        "params": {k: v for k, v in params.items() if k not in ENGINE_PARAMS},
        "chain": list(chain),
    }
    canonical = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def cache_enabled(params: Mapping[str, Any]) -> bool:
    return params.get("cache", True) is not False


@dataclass(frozen=True, slots=True)
class CachedResult:
    """A stored success: the parts of ``TaskSucceededData`` that a cache hit repeats."""

    provider: str
    model: str
    usage: Mapping[str, int]
    finish_reason: str | None
    result: Mapping[str, Any]
    source_task: str
    stored_ms: int

    def succeeded_data(self, attempt: int, latency_ms: int) -> dict[str, Any]:
        """The ``TaskSucceeded`` data of a hit: ``cached: true``, cost 0 (nothing was called)."""
        return {
            "attempt": attempt,
            "provider": self.provider,
            "model": self.model,
            "usage": dict(self.usage),
            "cost_usd": 0.0,
            "finish_reason": self.finish_reason,
            "result": dict(self.result),
            "latency_ms": latency_ms,
            "cached": True,
        }


class ResultCache:
    """Redis-backed result cache with TTL and a per-shard LRU bound."""

    def __init__(
        self,
        redis: aioredis.Redis,
        namespace: str,
        *,
        ttl_s: float = 3600.0,
        max_entries: int = 100_000,
        shards: int = 16,
    ) -> None:
        if not 1 <= shards <= max_entries:
            raise ValueError("need 1 <= shards <= max_entries")
        self.redis = redis
        self.namespace = namespace
        self.ttl_ms = int(ttl_s * 1000)
        self.per_shard = max_entries // shards
        self.shards = shards
        self._put = redis.register_script(_PUT)
        self._get = redis.register_script(_GET)

    def _keys(self, key: str) -> tuple[str, str]:
        return cache_keys(self.namespace, int(key[:8], 16) % self.shards, key)

    async def get(self, key: str) -> CachedResult | None:
        entry, index = self._keys(key)
        with translate_errors():
            keys, args = build_cache_get(entry, index, int(time.time() * 1000))
            raw = await self._get(keys=keys, args=args)
        if raw is None:
            return None
        d = orjson.loads(raw)
        return CachedResult(
            provider=d["provider"],
            model=d["model"],
            usage=d["usage"],
            finish_reason=d.get("finish_reason"),
            result=d["result"],
            source_task=d["source_task"],
            stored_ms=d["stored_ms"],
        )

    async def put(self, key: str, succeeded: Mapping[str, Any], task_id: str) -> int:
        """Store a task's success (``TaskSucceededData`` as a dict); returns how many entries
        were evicted to make room. Cache hits themselves are never stored again."""
        if succeeded.get("cached"):
            return 0
        value = orjson.dumps(
            {
                "provider": succeeded["provider"],
                "model": succeeded["model"],
                "usage": succeeded.get("usage") or {},
                "finish_reason": succeeded.get("finish_reason"),
                "result": succeeded["result"],
                "source_task": task_id,
                "stored_ms": int(time.time() * 1000),
            }
        )
        entry, index = self._keys(key)
        now = int(time.time() * 1000)
        keys, args = build_cache_put(entry, index, value, self.ttl_ms, now, self.per_shard)
        with translate_errors():
            return parse_cache_put(await self._put(keys=keys, args=args))
