"""Task webhooks as ``aiis ops`` runs them: a terminal event of a task with a callback URL
(``<tag>:cb``, written by submit.lua) gets a signed delivery in the background
(``engine.operations.webhooks``), each attempt recorded as a ``WebhookAttempted`` event on the
ops stream; the URL is forgotten once delivered or given up, and deliveries cut by a restart are
recovered from the callback hash at start. Also the ops stream's writer, ``append_ops``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import redis.asyncio as aioredis

from engine.admission.callbacks import Resolver, UrlPolicy, system_resolver
from engine.client import Client
from engine.core import mapper
from engine.core.events import TERMINAL_CODES, TaskSucceeded
from engine.core.keys import ops_key
from engine.core.store import translate_errors
from engine.operations.webhooks import DeliveryAttempt, DeliveryPolicy, WebhookNotifier
from engine.settings import Settings

log = logging.getLogger("aiis.ops")
MAX_PENDING_DELIVERIES = 10_000


async def append_ops(
    redis: aioredis.Redis,
    settings: Settings,
    event_type: str,
    data: Mapping[str, Any],
    *,
    task_id: str = "",
    tenant: str = "*",
) -> str:
    """Append one event to the ops stream (``AlertRaised``, ``AlertResolved``,
    ``WebhookAttempted``); returns its id."""
    fields = mapper.entry_fields(event_type, task_id, tenant, int(time.time() * 1000), data)
    with translate_errors():
        eid = await redis.xadd(
            ops_key(settings.namespace),
            fields,  # type: ignore[arg-type]
            maxlen=settings.ops_stream_max_len,
            approximate=True,
        )
    return eid.decode() if isinstance(eid, bytes) else str(eid)


class Deliveries:
    """Signed callback deliveries in the background, bounded (``AIIS_WEBHOOK_CONCURRENCY`` at
    once, ``MAX_PENDING_DELIVERIES`` waiting before the reader is held back)."""

    def __init__(
        self,
        client: Client,
        http: httpx.AsyncClient,
        *,
        resolve: Resolver = system_resolver,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        s = self.settings = client.settings
        assert s.webhook_secret is not None
        self.client = client
        self.redis = client.store.redis
        self.webhooks = WebhookNotifier(
            http,
            s.webhook_secret,
            policy=DeliveryPolicy(
                max_attempts=s.webhook_max_attempts, base_s=s.webhook_base_delay_s
            ),
            urls=UrlPolicy(s.webhook_allow_private, s.webhook_allow_loopback),
            on_attempt=self._record_attempt,
            resolve=resolve,
            sleep=sleep,
        )
        self._slots = asyncio.Semaphore(s.webhook_concurrency)
        self._background: set[asyncio.Task[Any]] = set()
        self._delivering: dict[str, dict[str, Any]] = {}  # task id -> terminal envelope
        self.delivered = 0

    async def aclose(self) -> None:
        """Wait for deliveries in flight (they are bounded by their attempts)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    @property
    def busy(self) -> bool:
        return bool(self._background)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def callbacks(self, partition: int, terminal: list[dict[str, Any]]) -> None:
        key = self.client.store.keys(partition).callbacks
        ids = [env["task_id"] for env in terminal]
        with translate_errors():
            urls = await self.redis.hmget(key, ids)
        for env, url in zip(terminal, urls, strict=True):
            if url is not None:
                text = url.decode() if isinstance(url, bytes) else str(url)
                await self._deliver_later(partition, env, text)

    async def _deliver_later(self, partition: int, env: dict[str, Any], url: str) -> None:
        if env["task_id"] in self._delivering:
            return
        if len(self._background) >= MAX_PENDING_DELIVERIES:  # back-pressure on the reader
            await asyncio.wait(set(self._background), return_when=asyncio.FIRST_COMPLETED)
        self._delivering[env["task_id"]] = env
        self._spawn(self._deliver(partition, env, url))

    async def _deliver(self, partition: int, env: dict[str, Any], url: str) -> None:
        task_id = env["task_id"]
        try:
            async with self._slots:
                payload = await self._payload(env)
                last = await self.webhooks.deliver(task_id, url, payload, env["type"])
                self.delivered += 1
                if last.outcome != "delivered":
                    log.warning("webhook of task %s: %s (%s)", task_id, last.outcome, last.error)
            with translate_errors():
                await self.redis.hdel(self.client.store.keys(partition).callbacks, task_id)
        except Exception:
            log.exception("webhook of task %s: delivery crashed; it is retried at restart", task_id)
        finally:
            self._delivering.pop(task_id, None)

    async def _record_attempt(self, attempt: DeliveryAttempt) -> None:
        env = self._delivering.get(attempt.task_id)
        if env is None:
            return
        data = attempt.model_dump(exclude={"task_id", "ts"})
        data.update(event_type=env["type"], event_id=env["id"])
        await append_ops(
            self.redis,
            self.settings,
            "WebhookAttempted",
            data,
            task_id=attempt.task_id,
            tenant=env["tenant"],
        )

    async def _payload(self, env: dict[str, Any]) -> dict[str, Any]:
        """The terminal event as its caller sees it (PII restored, large text loaded)."""
        if env["type"] == "TaskSucceeded":
            event = TaskSucceeded.model_validate(env)
            env = (await self.client.for_caller(event)).model_dump(mode="json")
        return {"event": env}

    async def recover(self, cursors: Mapping[int, str], limit: int = 10_000) -> int:
        """Deliver callbacks whose terminal event is at or before the checkpoint (their
        delivery was cut by a restart); later ones come through the reader."""
        found = 0
        store = self.client.store
        for partition, cursor in cursors.items():
            keys = store.keys(partition)
            with translate_errors():
                pending: Any = await self.redis.hgetall(keys.callbacks)
            for raw_id, raw_url in list(pending.items())[:limit]:
                task_id = raw_id.decode()
                word = await self.client.state_word(task_id)
                if word is None or word.code not in TERMINAL_CODES or _after(word.ref, cursor):
                    continue
                entry = await store.event_at(partition, word.ref, task_id=task_id)
                if entry is None:
                    continue
                await self._deliver_later(partition, mapper.envelope(*entry), raw_url.decode())
                found += 1
        return found


def _after(a: str, b: str) -> bool:
    def parse(x: str) -> tuple[int, int]:
        ms, _, seq = x.partition("-")
        return int(ms or 0), int(seq or 0)

    return parse(a) > parse(b)
