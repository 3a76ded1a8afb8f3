"""``aiis intake``: the FastStream application that admits the intake stream (docs/intake.md).

Producers in any language ``XADD`` a task to ``<namespace>:intake`` (``AIIS_INTAKE_STREAM``);
each consumer of the group ``admission`` reads a batch, runs every entry through exactly
``Client.submit``'s steps (``Client.submit_task``, concurrently, so the client group-commits
them), writes the refused ones to ``<stream>:rejected`` and acknowledges the batch in one
pipeline. Exactly once: without an idempotency key an entry's id fixes its task id
(``keys.intake_task_id``), so an entry admitted again after a crash between ``TaskRequested``
and ``XACK`` is the same task. Entries left pending — their consumer died, Redis failed
mid-batch, or the queue was full — are reclaimed (``XAUTOCLAIM``, Redis 6.2) once idle for
``AIIS_INTAKE_RECLAIM_S``; a full queue's entry is retried so until its deadline, then refused
with ``queue_full``. The stream is trimmed below the oldest entry any group still needs.
Without ``AIIS_INTAKE_STREAM``, the default stream of earlier releases (``<namespace>:{intake}``)
is drained too while it exists, so entries left there or still written there are admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import redis.asyncio as aioredis
from faststream import AckPolicy, FastStream
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import RedisBatchStreamMessage
from faststream.redis.broker.cluster_broker import RedisClusterBroker
from faststream.redis.message import FAKE_CONSUMER
from faststream.redis.message import RedisBatchStreamMessage as BatchMessage
from redis.exceptions import ResponseError

from engine.admission.stream import IntakeEntry, Rejection, parse_entry, rejection_for
from engine.client import Client
from engine.core.keys import INTAKE_GROUP, intake_key, intake_rejected_key, legacy_intake_key
from engine.core.store import translate_errors
from engine.core.task import IntakeRef
from engine.errors import EngineError, QueueFull, RedisCommandError, RedisUnavailable
from engine.runtime.connection import connect_for
from engine.runtime.workers import redis_url
from engine.settings import Settings

log = logging.getLogger("aiis.intake")

Entry = tuple[bytes, Mapping[bytes, bytes]]
MAX_BACKOFF_S = 5.0
LATER: Literal["later"] = "later"  # admission failed for now (a full queue): leave it pending


def stream_of(settings: Settings) -> str:
    return settings.intake_stream or intake_key(settings.namespace)


def allowed_tenants(settings: Settings) -> frozenset[str] | None:
    names = frozenset(t.strip() for t in settings.intake_tenants.split(",") if t.strip())
    return names or None


class Outage:
    """Logs a Redis outage once, and its end once; ``backoff`` grows while it lasts."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.delay = 0.05

    def failed(self, exc: BaseException) -> float:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("Redis unavailable, retrying with backoff: %s", exc)
        self.delay = min(self.delay * 2, MAX_BACKOFF_S)
        return self.delay

    def ok(self) -> None:
        if self.since is not None:
            log.info("Redis is back after %.1f s", time.monotonic() - self.since)
            self.since = None
            self.delay = 0.05


class Intake:
    """Admits intake entries; ``admit`` takes a batch as XREADGROUP or XAUTOCLAIM returns it."""

    def __init__(
        self, client: Client, settings: Settings, consumer: str, stream: str | None = None
    ) -> None:
        self.client = client
        self.redis: aioredis.Redis = client.store.redis
        self.settings = settings
        self.stream = stream or stream_of(settings)
        self.rejected = intake_rejected_key(self.stream)
        self.tenants = allowed_tenants(settings)
        self.consumer = consumer
        self.outage = Outage()
        self._foreign = False  # the drained stream's name held another type (logged once)
        self.admitted = 0  # counters, for logs and tests
        self.refused = 0

    async def prepare(self, *, mkstream: bool = True) -> None:
        """The group, reading from the stream's start: entries added before the first
        ``aiis intake`` ran are admitted too."""
        with translate_errors():
            try:
                await self.redis.xgroup_create(self.stream, INTAKE_GROUP, id="0", mkstream=mkstream)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def admit(self, entries: Sequence[Entry]) -> None:
        """Admit a batch: accepted and refused entries are acknowledged, the refused ones
        recorded; an entry whose admission failed for now (Redis, a full queue before its
        deadline) stays pending and is reclaimed later."""
        await self.client.admission.ensure_loaded()  # the deployment's limits, from Redis
        outcomes = await asyncio.gather(
            *(self._one(eid.decode(), fields) for eid, fields in entries),
            return_exceptions=True,
        )
        done: list[bytes] = []
        refused: list[Rejection] = []
        for (eid, _), outcome in zip(entries, outcomes, strict=True):
            if isinstance(outcome, Rejection):
                refused.append(outcome)
            elif outcome == LATER:
                continue
            elif isinstance(outcome, BaseException):
                if not isinstance(outcome, RedisUnavailable):
                    log.error("entry %s not admitted: %r", eid.decode(), outcome)
                continue
            done.append(eid)
        failed = next((o for o in outcomes if isinstance(o, RedisUnavailable)), None)
        if done:
            await self._settle(done, refused)
        self.admitted += len(done) - len(refused)
        self.refused += len(refused)
        if failed is not None:
            raise failed

    async def _settle(self, done: list[bytes], refused: list[Rejection]) -> None:
        """Record the refusals, then acknowledge the batch: an entry is acknowledged only once
        its refusal is written (the two streams may sit on different cluster nodes, and a
        pipeline would run the XACK even when the XADD failed, losing the refusal)."""
        with translate_errors():
            if refused:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for r in refused:
                        pipe.xadd(
                            self.rejected,
                            r.fields(),  # type: ignore[arg-type]
                            maxlen=self.settings.intake_rejected_max_len,
                            approximate=True,
                        )
                    await pipe.execute()
            await self.redis.xack(self.stream, INTAKE_GROUP, *done)
        for r in refused:
            log.info("entry %s refused: %s (%s): %s", r.intake_id, r.code, r.field, r.message)

    async def _one(
        self, intake_id: str, fields: Mapping[bytes, bytes]
    ) -> Rejection | Literal["later"] | None:
        parsed = parse_entry(intake_id, fields, self.client.admission.limits.max_request_bytes)
        if isinstance(parsed, Rejection):
            return parsed
        tenant = parsed.task.get("tenant", "default")
        if self.tenants is not None and tenant not in self.tenants:
            return Rejection(
                intake_id,
                parsed.correlation_id,
                "tenant_not_allowed",
                "tenant",
                f"tenant {str(tenant)[:64]!r} may not use the intake (AIIS_INTAKE_TENANTS)",
            )
        ref = IntakeRef(self.stream, intake_id, parsed.correlation_id)
        try:
            await self.client.submit_task(parsed.task, intake=ref)
        except QueueFull as exc:
            if time.time() * 1000 < self._deadline_ms(parsed):
                return LATER  # stays pending: reclaimed and tried again
            return rejection_for(parsed, exc)
        except (RedisUnavailable, RedisCommandError):
            raise
        except EngineError as exc:
            return rejection_for(parsed, exc)
        return None

    def _deadline_ms(self, entry: IntakeEntry) -> float:
        deadline_s = entry.task.get("deadline_s")
        if not isinstance(deadline_s, (int, float)) or deadline_s <= 0:
            deadline_s = self.settings.task_deadline_s
        return entry.produced_ms + float(deadline_s) * 1000

    # --- background: reclaim and trim --------------------------------------------------

    async def reclaim_once(self) -> int:
        """Admit the entries pending longer than ``intake_reclaim_s`` (any consumer's: a dead
        one's, or ours left for later); the number found."""
        start, found = "0-0", 0
        idle_ms = int(self.settings.intake_reclaim_s * 1000)
        while True:
            with translate_errors():
                reply: Any = await self.redis.xautoclaim(
                    self.stream,
                    INTAKE_GROUP,
                    self.consumer,
                    idle_ms,
                    start_id=start,
                    count=self.settings.intake_batch,
                )
            start = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
            # Redis 6.2 returns a deleted (trimmed) entry as nil; 7 lists it apart
            entries = [e for e in reply[1] if e is not None and e[1] is not None]
            if entries:
                found += len(entries)
                await self.admit(entries)
            if start == "0-0":
                return found

    async def trim_once(self) -> None:
        """Drop entries no group needs: below each group's oldest pending entry, or its last
        delivered one when nothing is pending (``XTRIM MINID``, Redis 6.2)."""
        with translate_errors():
            groups: Any = await self.redis.xinfo_groups(self.stream)
            floor: tuple[int, int] | None = None
            for g in groups:
                mark = _id(g["last-delivered-id"])
                mark = (mark[0], mark[1] + 1)
                if int(g["pending"]):
                    summary: Any = await self.redis.xpending(self.stream, g["name"])
                    if summary["min"] is not None:
                        mark = min(mark, _id(summary["min"]))
                floor = mark if floor is None else min(floor, mark)
            if floor is not None and floor > (0, 0):
                await self.redis.xtrim(
                    self.stream, minid=f"{floor[0]}-{floor[1]}", approximate=True
                )

    async def background(self, *, drain: bool = False) -> None:
        """Reclaim and trim, every ``intake_reclaim_s / 2``, until cancelled; with ``drain``
        (a stream no subscriber reads: the legacy one) also admit its new entries, once it
        exists."""
        while True:
            try:
                if not drain or await self._drain_once():
                    await self.reclaim_once()
                    await self.trim_once()
                self.outage.ok()
                await asyncio.sleep(self.settings.intake_reclaim_s / 2)
            except RedisUnavailable as exc:
                await asyncio.sleep(self.outage.failed(exc))
            except EngineError as exc:
                log.error("intake upkeep failed: %s", exc)
                await asyncio.sleep(self.settings.intake_reclaim_s)

    async def _drain_once(self) -> bool:
        """Admit the entries not read yet of a stream no subscriber reads; False while it is
        not a stream (absent: nothing to do, and nothing created; another type: not ours)."""
        with translate_errors():
            kind = await self.redis.type(self.stream)
        if kind not in (b"stream", "stream"):
            if kind not in (b"none", "none") and not self._foreign:
                self._foreign = True
                log.warning("%s is a %s, not a stream: not drained", self.stream, kind)
            return False
        await self.prepare(mkstream=False)  # an operator's DEL is not undone here
        while True:
            with translate_errors():
                reply: Any = await self.redis.xreadgroup(
                    INTAKE_GROUP,
                    self.consumer,
                    {self.stream: ">"},
                    count=self.settings.intake_batch,
                )
            entries = [e for _, batch in reply or [] for e in batch]
            if not entries:
                return True
            log.warning(
                "admitting %d entries from %s, the intake stream of earlier releases; "
                "producers should XADD to %s (DESIGN.md)",
                len(entries),
                self.stream,
                intake_key(self.settings.namespace),
            )
            await self.admit(entries)


def _id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class _OnceFilter(logging.Filter):
    """FastStream logs every failed read; an outage is logged once (``Outage`` does)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Message fetch error" not in record.getMessage()


async def _parse(raw: Any) -> BatchMessage:
    """The batch as read, unparsed: entries are read by ``engine.admission.stream``, so a bad one
    refuses that entry instead of failing FastStream's own parser for the whole batch."""
    return BatchMessage(raw, b"", consumer=FAKE_CONSUMER, group=None)


async def _decode(msg: Any) -> Any:
    return None


def build_app(settings: Settings, consumers: int = 1) -> tuple[FastStream, Intake]:
    """The FastStream application: ``consumers`` batch subscribers of the group ``admission``."""
    url = redis_url(settings)
    client = Client(connect_for(settings, url=url), settings)
    me = f"{socket.gethostname()}-{os.getpid()}"
    intake = Intake(client, settings, f"{me}-reclaim")
    fs_log = logging.getLogger("aiis.intake.faststream")
    fs_log.addFilter(_OnceFilter())
    broker_cls = RedisClusterBroker if settings.redis_cluster else RedisBroker
    broker = broker_cls(url, logger=fs_log)

    async def handle(body: Any, msg: RedisBatchStreamMessage) -> None:
        raw = msg.raw_message
        entries = list(zip(raw["message_ids"], raw["data"], strict=True))
        try:
            await intake.admit(entries)
            intake.outage.ok()
        except RedisUnavailable as exc:  # the entries stay pending; reclaimed when back
            await asyncio.sleep(intake.outage.failed(exc))

    for i in range(consumers):
        sub = StreamSub(
            intake.stream,
            group=INTAKE_GROUP,
            consumer=f"{me}-{i}",
            batch=True,
            max_records=settings.intake_batch,
            polling_interval=1000,
        )
        broker.subscriber(stream=sub, parser=_parse, decoder=_decode, ack_policy=AckPolicy.MANUAL)(
            handle
        )
    upkeep: list[asyncio.Task[None]] = []

    async def on_startup() -> None:
        while True:
            try:
                await client.adopt_deployment()
                await intake.prepare()
                intake.outage.ok()
                return
            except RedisUnavailable as exc:
                await asyncio.sleep(intake.outage.failed(exc))

    async def after_startup() -> None:
        upkeep.append(asyncio.create_task(intake.background()))
        if not settings.intake_stream:
            legacy = legacy_intake_key(settings.namespace)
            old = Intake(client, settings, f"{me}-legacy", stream=legacy)
            upkeep.append(asyncio.create_task(old.background(drain=True)))
        log.info(
            "admitting %s with %d consumer(s) of group %r", intake.stream, consumers, INTAKE_GROUP
        )

    async def after_shutdown() -> None:
        for task in upkeep:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.aclose()

    app = FastStream(
        broker,
        on_startup=[on_startup],
        after_startup=[after_startup],
        after_shutdown=[after_shutdown],
        logger=fs_log,
    )
    return app, intake


def run(settings: Settings, consumers: int = 1) -> int:
    """``aiis intake``: runs until SIGINT/SIGTERM."""
    app, _ = build_app(settings, consumers)
    asyncio.run(app.run())
    return 0
