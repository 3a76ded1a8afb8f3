"""The producer API of the core: ``submit``, ``get``, ``cancel``, ``watch``. What a task passes
through before it is written is the ``Admission`` it is given (``engine.core.ports``); the
service's own, with budgets, templates, sanitising and the PII policy, is wired in by
``engine.client.Client`` (``Client.from_url(url)``), which is what callers use.

Concurrent ``submit`` calls are group-committed: whatever accumulates while one batch is in
flight goes to Redis as the next single script call, so a busy producer pays one round trip
per batch, not per task, and a lone submit still costs exactly one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Self

import orjson
import redis.asyncio as aioredis

from engine.core import mapper, tolerant
from engine.core.blobs import Offloader, ResultRef
from engine.core.events import (
    OMITTED_WHEN_NONE,
    TERMINAL_CODES,
    TERMINAL_EVENTS,
    Event,
    Status,
    TaskRequestedData,
    TaskSucceeded,
)
from engine.core.keys import (
    correlation_key,
    intake_task_id,
    new_task_id,
    partition_for_key,
    partition_of,
    vault_key,
)
from engine.core.ports import Admission
from engine.core.script_args import SubmitItem
from engine.core.store import StateWord, Store, id_before, translate_errors
from engine.core.task import IntakeRef, TaskSpec, fingerprint, input_json, validate_task
from engine.errors import (
    EngineError,
    EventDecodeError,
    IdempotencyConflict,
    InvalidTask,
    QueueFull,
    TaskNotFound,
)
from engine.settings import Settings

MAX_BATCH = 256

log = logging.getLogger("aiis.client")


@dataclass(frozen=True, slots=True)
class TaskView:
    """A task as the engine holds it right now."""

    task_id: str
    status: Status
    attempts: int
    tenant: str
    priority: str
    kind: str
    created_ms: int
    deadline_ms: int
    terminal: Event | None  # the terminal event, once there is one

    def as_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "status": self.status.value,
            "attempts": self.attempts,
            "tenant": self.tenant,
            "priority": self.priority,
            "kind": self.kind,
            "created_ms": self.created_ms,
            "deadline_ms": self.deadline_ms,
            "terminal": self.terminal.model_dump(mode="json") if self.terminal else None,
        }


class Submitted(NamedTuple):
    """What a submit did: the task id, and whether this submit created the task (False: its
    idempotency key already named a task, which it now shares with the earlier request)."""

    task_id: str
    created: bool


@dataclass(slots=True)
class _Pending:
    item: SubmitItem
    future: asyncio.Future[Submitted]
    priority: str
    tenant: str = ""
    held: bool = False  # a budget reservation to give back unless the task is queued


class Client:
    """Submit and follow tasks. One per process is plenty; it is safe for concurrent use."""

    def __init__(self, redis: aioredis.Redis, settings: Settings, admission: Admission) -> None:
        self.settings = settings
        self.store = Store(redis, self.settings)
        self.admission = admission
        self._pending: dict[int, list[_Pending]] = {}
        self._flushers: dict[int, asyncio.Task[None]] = {}
        self._checked: asyncio.Future[None] | None = None
        self._tracing = settings.tracing_on  # stamp submit_us (engine/operations/tracing.py)

    async def aclose(self) -> None:
        for task in list(self._flushers.values()):
            await task
        await self.admission.aclose()
        with translate_errors():
            await self.store.redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- submit ----------------------------------------------------------------------------

    async def submit(
        self,
        input: str | list[dict[str, str]],
        *,
        kind: str = "text",
        priority: str = "normal",
        tenant: str = "default",
        idempotency_key: str | None = None,
        params: dict[str, Any] | None = None,
        deadline_s: float | None = None,
        callback_url: str | None = None,
        traceparent: str | None = None,
    ) -> str:
        """Accept a task and return its id at once. Raises ``InvalidTask`` (and its kinds
        ``PiiBlocked``, ``TemplateError``, ``BadCallbackUrl``), ``BudgetExceeded`` or
        ``QueueFull``; ``IdempotencyConflict`` when ``idempotency_key`` already names a task
        with another kind, input or params. ``callback_url`` is the same as
        ``params["callback_url"]``; ``traceparent`` (W3C) makes the task's trace a part of the
        caller's."""
        raw: dict[str, Any] = {"kind": kind, "input": input, "priority": priority, "tenant": tenant}
        if idempotency_key is not None:
            raw["idempotency_key"] = idempotency_key
        if callback_url is not None:
            params = {**(params or {}), "callback_url": callback_url}
        if params is not None:
            raw["params"] = params
        if deadline_s is not None:
            raw["deadline_s"] = deadline_s
        if traceparent is not None:
            raw["traceparent"] = traceparent
        return await self.submit_task(raw)

    async def submit_task(self, raw: dict[str, Any], *, intake: IntakeRef | None = None) -> str:
        """``submit`` of a task object as ``POST /v1/tasks`` takes it: validated against the
        deployment's limits, then ``submit_spec``. The intake admits each entry through here."""
        await self.admission.ensure_loaded()
        return await self.submit_spec(validate_task(raw, self.admission.limits), intake=intake)

    async def submit_spec(
        self, spec: TaskSpec, *, retry_of: str | None = None, intake: IntakeRef | None = None
    ) -> str:
        """Submit a validated task (see ``submit``, and ``engine.core.ports.Admission`` for what
        happens to it first). ``intake``: the intake entry it comes from; without an
        idempotency key the entry fixes the task id, so admitting it twice is one task."""
        submitted = await self.submit_outcome(spec, retry_of=retry_of, intake=intake)
        return submitted.task_id

    async def submit_outcome(
        self, spec: TaskSpec, *, retry_of: str | None = None, intake: IntakeRef | None = None
    ) -> Submitted:
        """``submit_spec``, telling whether this submit created the task or its idempotency
        key attached it to an earlier one."""
        began_us = time.time_ns() // 1000 if self._tracing else None
        # the request as its caller sent it: admission may redact or render the input
        fp = fingerprint(spec) if spec.idempotency_key is not None else None
        admitted = await self.admission.admit(spec, resubmit=retry_of is not None)
        spec = admitted.spec
        await self._deployment()
        n = self.settings.partitions
        if spec.idempotency_key is not None:
            partition = partition_for_key(spec.tenant, spec.idempotency_key, n)
            task_id = new_task_id(partition, n)
        elif intake is not None:
            task_id = intake_task_id(intake.stream, intake.intake_id)
            partition = partition_of(task_id, n)
        else:
            partition = self._next_partition()
            task_id = new_task_id(partition, n)
        held = await self.admission.reserve(spec, task_id)
        now = int(time.time() * 1000)
        deadline_ms = now + int((spec.deadline_s or self.settings.task_deadline_s) * 1000)
        requested = TaskRequestedData(
            kind=spec.kind,
            input=spec.input,
            params=spec.params,
            priority=spec.priority,
            idempotency_key=spec.idempotency_key,
            deadline_ms=deadline_ms,
            retry_of=retry_of,
            traceparent=spec.traceparent,
            submit_us=began_us,
            correlation_id=intake.correlation_id if intake else None,
            intake_id=intake.intake_id if intake else None,
        )
        record = {
            "tenant": spec.tenant,
            "kind": spec.kind,
            "input": input_json(spec),
            "params": spec.params,
            "priority": spec.priority,
            "created": now,
            "deadline": deadline_ms,
            "idem": spec.idempotency_key,
        }
        if fp is not None:
            record["fp"] = fp  # submit.lua compares it on a repeated key
        tag = self.store.keys(partition).tag
        corr_key = corr_ttl = ""
        if intake is not None and intake.correlation_id:
            corr_key = correlation_key(tag, spec.tenant, intake.correlation_id)
            corr_ttl = str(int((deadline_ms - now) / 1000 + self.settings.task_retention_s) + 60)
        item = SubmitItem(
            task_id,
            spec.tenant,
            spec.priority,
            spec.idempotency_key or "",
            orjson.dumps(record).decode(),
            # tracing's and the intake's fields only when set: other events stay as they were
            requested.model_dump_json(
                exclude={k for k in OMITTED_WHEN_NONE if getattr(requested, k) is None}
            ),
            admitted.pii_mapping,
            vault_key(tag, task_id) if admitted.pii_mapping else "",
            str(self.admission.pii_ttl_s(deadline_ms)) if admitted.pii_mapping else "",
            admitted.callback_url,
            corr_key,
            corr_ttl,
        )
        future: asyncio.Future[Submitted] = asyncio.get_running_loop().create_future()
        pending = _Pending(item, future, spec.priority, spec.tenant, held)
        self._pending.setdefault(partition, []).append(pending)
        if partition not in self._flushers:
            self._flushers[partition] = asyncio.create_task(self._flush(partition))
        return await future

    async def adopt_deployment(self) -> Settings:
        """The deployment's partition count, adopted (see ``_deployment``); the settings this
        client then runs with. Long-lived readers (gateway, ops) call it before they size
        themselves, so one without ``AIIS_PARTITIONS`` reads every partition there is."""
        await self._deployment()
        return self.settings

    async def _deployment(self) -> None:
        """Once per client: the deployment's partition count (the first writer seeds it). A
        client whose environment does not set AIIS_PARTITIONS adopts it; one that sets another
        count is refused (``ConfigError``), so no producer writes to partitions the workers do
        not read, nor looks for a task in the wrong one."""
        if self._checked is None:
            self._checked = asyncio.ensure_future(self._adopt_partitions())
        try:
            await asyncio.shield(self._checked)
        except BaseException:
            self._checked = None
            raise

    async def _adopt_partitions(self) -> None:
        if "partitions" in self.settings.model_fields_set:
            await self.store.check_partitions()
            return
        stored = await self.store.deployment_partitions()
        if stored != self.settings.partitions:
            log.info("using this deployment's %d partitions", stored)
            self.store.use_partitions(stored)
            self.settings = self.store.settings

    _rr = 0

    def _next_partition(self) -> int:
        self._rr = (self._rr + 1) % self.settings.partitions
        return self._rr

    async def _flush(self, partition: int) -> None:
        try:
            queue = self._pending[partition]
            while queue:
                batch, queue[:] = queue[:MAX_BATCH], queue[MAX_BATCH:]
                try:
                    limit = self.admission.limits.queue_max_depth
                    results = await self.store.submit(
                        partition, [p.item for p in batch], max_depth=limit
                    )
                except Exception as exc:
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    continue
                for p, (status, value) in zip(batch, results, strict=True):
                    if p.held and value != p.item[0]:  # refused, a duplicate or a conflict
                        try:
                            await self.admission.release(p.tenant, p.item[0])
                        except EngineError as exc:  # the hold expires with its key instead
                            log.warning("could not release a budget reservation: %s", exc)
                    if p.future.done():  # its submitter was cancelled; the others still wait
                        continue
                    if status == "full":
                        p.future.set_exception(QueueFull(p.priority, int(value), limit))
                    elif status == "conflict":
                        p.future.set_exception(IdempotencyConflict(value))
                    else:  # 'new', or 'dup': of its own id only when this batch ran before
                        p.future.set_result(Submitted(value, value == p.item[0]))
        finally:
            del self._flushers[partition]

    # --- read, cancel, watch ---------------------------------------------------------------

    def _partition(self, task_id: str) -> int:
        if not task_id or len(task_id) > 64:
            raise InvalidTask("task_id", "not a task id")
        return partition_of(task_id, self.settings.partitions)

    async def get(self, task_id: str, *, for_caller: bool = True) -> TaskView:
        """The task's current state, with its terminal event once it has one. ``for_caller``:
        a result stored out of line is loaded into ``result.text``, and PII placeholders are
        restored from the task's vault (when its tenant's policy allowed keeping a mapping).
        The stored event itself never holds the original values."""
        await self._deployment()
        partition = self._partition(task_id)
        found = await self.store.state(partition, task_id)
        if found is None:
            raise TaskNotFound(task_id)
        word, raw_record = found
        record = orjson.loads(raw_record) if raw_record else {}
        terminal = None
        if word.code in TERMINAL_CODES:
            entry = await self.store.event_at(partition, word.ref, task_id=task_id)
            if entry is not None:
                terminal = mapper.decode(*entry)
                if for_caller and isinstance(terminal, TaskSucceeded):
                    terminal = await self.for_caller(terminal)
        return TaskView(
            task_id=task_id,
            status=word.code.status,
            attempts=word.attempt,
            tenant=word.tenant,
            priority=word.priority,
            kind=record.get("kind", ""),
            created_ms=record.get("created", 0),
            deadline_ms=record.get("deadline", 0),
            terminal=terminal,
        )

    async def for_caller(self, event: TaskSucceeded) -> TaskSucceeded:
        """``event`` as its caller may see it: the out-of-line text loaded, PII restored."""
        result = event.data.result
        text = result.text
        if result.ref is not None:
            ref = ResultRef(result.ref.key, result.ref.size, result.ref.sha256)
            text = await Offloader(self.store.redis).load(ref)
        if text is not None:
            tag = self.store.keys(self._partition(event.task_id)).tag
            text = await self.admission.restore(tag, event.task_id, text)
        if text == result.text:
            return event
        data = event.data.model_copy(update={"result": result.model_copy(update={"text": text})})
        return event.model_copy(update={"data": data})

    async def cancel(self, task_id: str, *, tenant: str = "") -> Status:
        """Cancel the task unless it already ended; returns its status afterwards."""
        await self._deployment()
        reply = await self.store.cancel(self._partition(task_id), task_id, tenant)
        if reply.outcome == "missing":
            raise TaskNotFound(task_id)
        if reply.code is not None:
            return reply.code.status
        return Status.CANCELLED

    async def state_word(self, task_id: str) -> StateWord | None:
        await self._deployment()
        found = await self.store.state(self._partition(task_id), task_id)
        return found[0] if found else None

    async def watch(
        self,
        task_id: str,
        since: str | None = None,
        *,
        block_ms: int = 1000,
        stop: Callable[[], bool] | None = None,
    ) -> AsyncGenerator[Event, None]:
        """The task's events from the start (or after ``since``), live, until its terminal one
        (or until ``stop()`` says so, checked after every read of at most ``block_ms``). Events
        of an archived (trimmed) part of the log come from those kept beside the task."""
        await self._deployment()
        partition = self._partition(task_id)
        if since is None:
            word = await self.state_word(task_id)
            if word is None:
                raise TaskNotFound(task_id)
            since = id_before(word.requested_id)
        cursor = since
        me = asyncio.current_task()
        while True:
            entries = await self.store.history(partition, task_id, cursor)
            if not entries:
                entries = await self.store.read_log(partition, cursor, block_ms=block_ms)
            if me is not None and me.cancelling():
                # redis-py can swallow a cancellation that lands in a blocked XREAD
                raise asyncio.CancelledError
            if stop is not None and stop():
                return
            for eid, fields in entries:
                cursor = eid.decode()
                if fields.get(b"task") != task_id.encode():
                    continue
                try:
                    event = mapper.decode(eid, fields)
                except EventDecodeError as exc:  # anyone can XADD: skip it, never stop
                    tolerant.skipped("watch", cursor, exc)
                    continue
                yield event
                if event.type in TERMINAL_EVENTS:
                    return

    async def find_correlation(self, correlation_id: str, *, tenant: str = "default") -> str:
        """The task an intake entry of ``tenant`` with ``correlation_id`` became, from the
        correlation index (kept for the task's retention; no log scan). ``TaskNotFound`` when
        no such entry was admitted (yet)."""
        await self._deployment()
        task_id = await self.store.correlated(tenant, correlation_id)
        if task_id is None:
            raise TaskNotFound(f"correlation {correlation_id[:128]!r}")
        return task_id

    async def watch_correlation(
        self,
        correlation_id: str,
        *,
        tenant: str = "default",
        since: str | None = None,
        block_ms: int = 1000,
        stop: Callable[[], bool] | None = None,
    ) -> AsyncGenerator[Event, None]:
        """``watch`` of the task found by ``find_correlation``."""
        task_id = await self.find_correlation(correlation_id, tenant=tenant)
        async for event in self.watch(task_id, since, block_ms=block_ms, stop=stop):
            yield event

    async def ping(self) -> None:
        with translate_errors():
            await self.store.redis.ping()
