"""What happens to a successful result before it is committed: the result cache (a hit skips
the provider), sanitising, truncation over the size limit, and out-of-line storage of large
texts (the event then carries a reference). Every step is optional and costs nothing when off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from engine.admission.cache import ResultCache, cache_enabled, request_key
from engine.admission.sanitize import Limits, clean_result
from engine.core.blobs import Offloader
from engine.core.outbox import Running
from engine.core.store import Store
from engine.errors import EngineError
from providers.types import ProviderRequest

log = logging.getLogger("aiis.worker")


class Results:
    def __init__(self, store: Store, chains: Mapping[str, Sequence[str]]) -> None:
        s = store.settings
        self.store = store
        self.chains = chains
        self.cache = (
            ResultCache(
                store.redis, s.namespace, ttl_s=s.cache_ttl_s, max_entries=s.cache_max_entries
            )
            if s.cache
            else None
        )
        self.limits = Limits(s.max_request_bytes, s.max_result_bytes)
        self.offloader = Offloader(
            store.redis, threshold_bytes=s.result_offload_bytes, ttl_s=int(s.task_retention_s)
        )

    def cache_key(self, run: Running, request: ProviderRequest) -> str | None:
        """The cache key of the request, when the cache is on and the task did not opt out."""
        if self.cache is None or not cache_enabled(request.params):
            return None
        return request_key(
            request.tenant,
            request.kind,
            run.record["input"],
            request.params,
            self.chains.get(request.kind, ()),
        )

    async def cached(self, run: Running, key: str, started: float) -> dict[str, Any] | None:
        """``TaskSucceeded`` data of a cached result (``cached: true``, cost 0), if any."""
        assert self.cache is not None
        try:
            hit = await self.cache.get(key)
        except EngineError as exc:
            log.warning(
                "task %s: cache unavailable, calling the provider: %s", run.held.task_id, exc
            )
            return None
        if hit is None:
            return None
        latency_ms = int((time.monotonic() - started) * 1000)
        return hit.succeeded_data(run.held.attempt, latency_ms)

    async def finish(
        self, run: Running, data: dict[str, Any], text: str | None, cache_key: str | None
    ) -> None:
        """Sanitise and (if large) store out of line the result text of ``data``; cache it."""
        if text is not None:
            await self._store_text(run, data["result"], text)
        if cache_key is not None and self.cache is not None:
            try:
                await self.cache.put(cache_key, data, run.held.task_id)
            except EngineError as exc:
                log.warning("task %s: result not cached: %s", run.held.task_id, exc)

    async def _store_text(self, run: Running, result: dict[str, object], text: str) -> None:
        """Sanitise the result text in place; over the offload size it goes to its own key and
        the event carries a reference."""
        cleaned, truncated = clean_result(text, self.limits)
        result["text"] = cleaned
        if truncated:
            result["truncated"] = True
        if not self.offloader.needs_offload(cleaned):
            return
        tag = self.store.keys(run.partition).tag
        try:
            ref = await self.offloader.store(tag, run.held.task_id, run.held.attempt, cleaned)
        except EngineError as exc:  # keep it inline: a big event beats a lost result
            log.warning("task %s: result kept inline: %s", run.held.task_id, exc)
            return
        if ref is not None:
            result["text"] = None
            result["ref"] = ref.as_dict()
