"""The worker: claims tasks from the work streams, calls the provider, commits the outcome.

Per process: one fetch loop per partition, one asyncio task per call (at most ``concurrency``
in flight), one flusher that group-commits outcomes and progress, and one control loop that
renews leases, notices cancellation, promotes due retries and reclaims crashed consumers' work.

Priority rule (documented in README): nine of ten fetches take high → normal → low; one in ten
takes low first and one in ten normal first, so ``low`` gets at least a tenth of the fetches
while it has work and is never starved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time

import orjson

from engine.core.inflight import InFlightLimit
from engine.core.keys import PRIORITIES
from engine.core.outbox import Outbox, Running, Sink, error_data, succeeded_data
from engine.core.ports import ResultStage
from engine.core.retry import RetryPolicy, Verdict, decide
from engine.core.script_args import RenewHeld
from engine.core.store import JANITOR_BATCH, Started, Store
from engine.errors import MalformedTask, RedisUnavailable
from engine.settings import Settings
from providers.errors import ProviderError
from providers.types import ChatMessage, ProviderRequest, TaskProcessor

log = logging.getLogger("aiis.worker")

ORDERS = ("high,normal,low", "normal,high,low", "low,normal,high")
JANITOR_ROUNDS = 100  # janitor calls per partition per minute at most (100,000 tasks)


def fetch_order(n: int) -> str:
    """Priority order of the ``n``-th fetch (see module docstring)."""
    if n % 10 == 9:
        return ORDERS[2]
    if n % 10 == 4:
        return ORDERS[1]
    return ORDERS[0]


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.randrange(16**4):04x}"


class Worker:
    """A pool of asyncio calls in one process, fed from Redis."""

    def __init__(
        self,
        store: Store,
        processor: TaskProcessor,
        results: ResultStage,
        *,
        concurrency: int | None = None,
        consumer: str | None = None,
    ) -> None:
        s = store.settings
        self.store = store
        self.settings: Settings = s
        self.processor = processor
        self.concurrency = concurrency or s.concurrency
        self.consumer = consumer or consumer_name()
        self.policy = RetryPolicy(s.retry_base_s, s.retry_max_s, s.retry_jitter, s.max_deliveries)
        self._running: dict[tuple[int, str], Running] = {}
        self.outbox = Outbox(store, self.consumer, self._retire, self._running.values)
        self.limit = InFlightLimit(self.concurrency)
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._halt = asyncio.Event()
        self._fetches = 0
        self.stats = {"started": 0, "committed": 0, "fenced": 0, "reclaimed": 0, "released": 0}
        self.results = results
        self.stats["cache_hits"] = 0

    # --- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking work; in-flight calls finish (up to the drain timeout) or are released."""
        self._stopping.set()
        self._slot_freed.set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def run(self) -> None:
        await self.store.prepare()
        flusher = asyncio.create_task(self.outbox.run(self._halt), name="flusher")
        control = asyncio.create_task(self._control(), name="control")
        fetchers = [
            asyncio.create_task(self._fetch_loop(p), name=f"fetch-{p}")
            for p in range(self.settings.partitions)
        ]
        log.info("worker %s started: concurrency %d", self.consumer, self.concurrency)
        try:
            await self._stopping.wait()
            await asyncio.gather(*fetchers)
            await self._drain()
        finally:
            for t in fetchers:
                t.cancel()
            # loops stop on their own (redis-py can swallow a cancellation mid-command)
            self._halt.set()
            self.outbox.wake()
            await asyncio.gather(control, flusher, return_exceptions=True)
            await self.outbox.flush()
            with contextlib.suppress(RedisUnavailable):
                await self.store.forget_consumer(self.consumer)
            log.info(
                "worker %s stopped: %s, in-flight limit %d/%d",
                self.consumer,
                self.stats,
                self.limit.current,
                self.concurrency,
            )

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self._running and time.monotonic() < deadline:
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), deadline - time.monotonic())
        for run in list(self._running.values()):
            if run.task is not None and not run.task.done():
                run.releasing = True
                run.task.cancel()
        while self._running:
            self._slot_freed.clear()
            await self._slot_freed.wait()

    # --- fetching --------------------------------------------------------------------------

    async def _fetch_loop(self, partition: int) -> None:
        block_ms = max(10, int(min(1.0, self.settings.control_interval_s) * 1000))
        while not self._stopping.is_set():
            free = self.limit.current - len(self._running)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                self._fetches += 1
                order = fetch_order(self._fetches)
                got = await self.store.fetch(
                    partition, self.consumer, min(free, self.settings.fetch_batch), order
                )
                self._launch(partition, got.started)
                if got.started or got.dropped or got.dead:
                    continue
                if free >= len(PRIORITIES):
                    entries = await self.store.wait_for_work(partition, self.consumer, block_ms)
                    if entries:
                        got = await self.store.adopt(partition, self.consumer, entries)
                        self._launch(partition, got.started)
                        # the calls go out before the next fetch script (time to first token)
                        await asyncio.sleep(0)
                else:  # a blocking read could hand us more than the free slots
                    await self._sleep(0.025)
            except RedisUnavailable as exc:
                self.outbox.trouble("fetch", exc)
                await self._sleep(0.5)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _launch(self, partition: int, started: list[Started]) -> None:
        for held in started:
            try:
                record = orjson.loads(held.record)
            except orjson.JSONDecodeError:
                record = {}
            run = Running(partition, held, record)
            self._running[(partition, held.task_id)] = run
            run.task = asyncio.create_task(self._call(run))
            self.stats["started"] += 1

    # --- calling ---------------------------------------------------------------------------

    def _request(self, run: Running) -> ProviderRequest:
        rec = run.record
        raw_input = rec["input"]
        deadline = rec.get("deadline")
        messages: tuple[ChatMessage, ...] = ()
        if isinstance(raw_input, str):
            prompt = raw_input
        else:
            prompt, messages = "", tuple(ChatMessage(m["role"], m["content"]) for m in raw_input)
        return ProviderRequest(
            task_id=run.held.task_id,
            tenant=rec["tenant"],
            kind=rec["kind"],
            prompt=prompt,
            messages=messages,
            params=rec.get("params") or {},
            attempt=run.held.attempt,
            deadline=deadline / 1000 if deadline else None,
        )

    async def _call(self, run: Running) -> None:
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        deadline_ms = int(run.record.get("deadline") or now_ms + 1)
        try:
            if "input" not in run.record or "tenant" not in run.record:
                raise MalformedTask("task record is missing or unreadable")
            if now_ms >= deadline_ms:
                raise TimeoutError
            request = self._request(run)
            cache_key = self.results.cache_key(run, request)
            if cache_key is not None:
                hit = await self.results.cached(run, cache_key, started)
                if hit is not None:
                    self.stats["cache_hits"] += 1
                    self.outbox.op(run, "S", hit)
                    return
            async with asyncio.timeout((deadline_ms - now_ms) / 1000):
                result = await self.processor.process(request, Sink(self.outbox, run))
        except asyncio.CancelledError:
            if run.releasing:
                self.outbox.flush_buffer(run)
                self.outbox.op(run, "Q", {"attempt": run.held.attempt, "reason": "released"})
                self.stats["released"] += 1
            elif not run.lost:
                raise
            return
        except TimeoutError:
            self._fail(run, "DeadlineExceeded", "the task's deadline passed")
        except MalformedTask as exc:
            self._dead(run, "malformed", "Malformed", str(exc))
        except ProviderError as exc:
            run.provider = exc.provider
            self.limit.record(exc.error_class)
            self._failed(run, exc.error_class, exc.message, exc.retry_after, now_ms, deadline_ms)
        except Exception as exc:
            log.exception("task %s: unexpected error in provider call", run.held.task_id)
            self._failed(run, "InternalError", type(exc).__name__, None, now_ms, deadline_ms)
        else:
            self.limit.record(None)
            data = succeeded_data(run, result, time.monotonic() - started)
            await self.results.finish(run, data, result.text, cache_key)
            self.outbox.flush_buffer(run)
            self.outbox.op(run, "S", data)

    def _failed(
        self,
        run: Running,
        error_class: str,
        message: str,
        retry_after: float | None,
        now_ms: int,
        deadline_ms: int,
    ) -> None:
        attempt = run.held.attempt
        d = decide(
            self.policy,
            error_class,
            attempt,
            retry_after=retry_after,
            now_ms=now_ms,
            deadline_ms=deadline_ms,
            rand=random.random(),
        )
        if d.verdict is Verdict.RETRY:
            delay_ms = int(d.delay_s * 1000)
            due = int(time.time() * 1000) + delay_ms
            data = {
                "attempt": attempt,
                "delay_ms": delay_ms,
                "due_ms": due,
                "error": error_data(run, error_class, message),
            }
            self.outbox.flush_buffer(run)
            self.outbox.op(run, "D", data, extra=due)
        elif d.verdict is Verdict.DEAD:
            self._dead(run, d.reason, error_class, message)
        else:
            self._fail(run, error_class, message)

    def _fail(self, run: Running, error_class: str, message: str) -> None:
        self.outbox.flush_buffer(run)
        error = error_data(run, error_class, message)
        self.outbox.op(run, "F", {"attempt": run.held.attempt, "error": error})

    def _dead(self, run: Running, reason: str, error_class: str, message: str) -> None:
        self.outbox.flush_buffer(run)
        error = error_data(run, error_class, message)
        self.outbox.op(
            run, "X", {"attempt": run.held.attempt, "reason": reason, "error": error}, reason
        )

    # --- committing ------------------------------------------------------------------------

    def _retire(self, run: Running, applied: bool | None = None) -> None:
        """``run`` is over: its outcome was written (``applied``), fenced out, or lost."""
        if applied is not None:
            self.stats["committed" if applied else "fenced"] += 1
        key = (run.partition, run.held.task_id)
        if self._running.get(key) is run:
            del self._running[key]
            self._slot_freed.set()

    # --- control loop: leases, cancellation, retries, reclaim, retention --------------------

    async def _control(self) -> None:
        s = self.settings
        interval = s.control_interval_s
        reclaim_every = max(interval, s.visibility_timeout_s / 4)
        last_reclaim = last_janitor = time.monotonic()
        cursors: dict[tuple[int, str], str] = {}
        while not self._halt.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._halt.wait(), interval)
            try:
                await self._renew()
                now = time.monotonic()
                for p in range(s.partitions):
                    await self.store.promote(p)
                if now - last_reclaim >= reclaim_every and not self._stopping.is_set():
                    last_reclaim = now
                    await self._reclaim(cursors)
                if now - last_janitor >= 60:
                    last_janitor = now
                    cutoff = int((time.time() - s.task_retention_s) * 1000)
                    for p in range(s.partitions):
                        for _ in range(JANITOR_ROUNDS):  # catch up, boundedly, per tick
                            if await self.store.janitor(p, cutoff) < JANITOR_BATCH:
                                break
            except RedisUnavailable as exc:
                self.outbox.trouble("control", exc)

    async def _renew(self) -> None:
        by_partition: dict[int, list[Running]] = {}
        for run in self._running.values():
            if not run.finished:
                by_partition.setdefault(run.partition, []).append(run)
        for partition, runs in by_partition.items():
            held = [
                RenewHeld(r.held.task_id, r.held.attempt, r.held.priority, r.held.entry_id)
                for r in runs
            ]
            for i in await self.store.renew(partition, self.consumer, held):
                run = runs[i]
                if run.finished:
                    continue
                run.lost = True
                log.info("task %s: lease lost (cancelled or reclaimed)", run.held.task_id)
                if run.task is not None:
                    run.task.cancel()
                self._retire(run)

    async def _reclaim(self, cursors: dict[tuple[int, str], str]) -> None:
        for p in range(self.settings.partitions):
            for priority in PRIORITIES:
                free = self.limit.current - len(self._running)
                if free <= 0:
                    return
                key = (p, priority.value)
                got = await self.store.claim(
                    p, self.consumer, priority.value, cursors.get(key, "0-0"), free
                )
                cursors[key] = got.cursor
                if got.started:
                    log.info("reclaimed %d idle tasks from %s", len(got.started), priority)
                    self.stats["reclaimed"] += len(got.started)
                self._launch(p, got.started)
