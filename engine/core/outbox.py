"""What a worker owes Redis: the outcome and progress of its calls, group-committed in order.

Each call is a ``Running``; its ``Sink`` writes the first streamed delta at once and buffers
the next ones (flushed every ``PROGRESS_FLUSH_S``) and queues notices; the terminal op
(success, failure, retry, dead letter, release) goes out after the call's last progress. The
``Outbox`` writes everything pending in one fenced script call per partition, retrying while
Redis is away — outcomes are never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.core.script_args import CommitOp
from engine.core.store import Started, Store
from engine.errors import RedisUnavailable
from providers.types import ProviderResult

log = logging.getLogger("aiis.worker")

PROGRESS_FLUSH_S = 0.05


@dataclass(slots=True, eq=False)
class Running:
    """A call in flight: what the worker holds and what it has yet to write."""

    partition: int
    held: Started
    record: dict[str, Any]
    task: asyncio.Task[None] | None = None
    buffer: list[str] = field(default_factory=list)
    lost: bool = False  # cancelled or reclaimed elsewhere: write nothing more
    provider: str | None = None  # the provider of the last failure
    releasing: bool = False
    finished: bool = False  # its terminal op is queued
    streamed: bool = False  # its first delta went out (the next ones are coalesced)


Row = CommitOp


class Outbox:
    """Ordered, batched, fenced writes of a worker's ops (see ``engine/core/lua/commit.lua``)."""

    def __init__(
        self,
        store: Store,
        consumer: str,
        retire: Callable[[Running, bool], None],
        running: Callable[[], Iterable[Running]],
    ) -> None:
        self.store = store
        self.consumer = consumer
        self._retire = retire
        self._running = running
        self._rows: list[tuple[int, Running, Row]] = []
        self._kick = asyncio.Event()
        self._lock = asyncio.Lock()
        self._progress_pending = False
        self._last_trouble_log = -1e9

    # --- queueing ops ----------------------------------------------------------------------

    def op(self, run: Running, op: str, data: Mapping[str, Any], extra: Any = "") -> None:
        """Queue ``op`` (P progress, S, F, X, D, Q — see commit.lua) for ``run``."""
        h = run.held
        if op == "P":
            data = {"attempt": h.attempt, **data}
        else:
            run.finished = True
        row = CommitOp(op, h.task_id, h.attempt, h.priority, h.entry_id, orjson.dumps(data), extra)
        self._rows.append((run.partition, run, row))
        self._kick.set()

    def flush_buffer(self, run: Running) -> None:
        """Queue ``run``'s buffered deltas as one progress op."""
        if run.buffer:
            text = "".join(run.buffer)
            run.buffer.clear()
            self.op(run, "P", {"delta": text})

    def progress_due(self) -> None:
        if not self._progress_pending:
            self._progress_pending = True
            asyncio.get_running_loop().call_later(PROGRESS_FLUSH_S, self._flush_progress)

    def _flush_progress(self) -> None:
        self._progress_pending = False
        for run in self._running():
            if not run.finished:
                self.flush_buffer(run)

    # --- writing ---------------------------------------------------------------------------

    async def run(self, halt: asyncio.Event) -> None:
        """Write whatever is queued, whenever something is, until ``halt``."""
        while not halt.is_set():
            await self._kick.wait()
            self._kick.clear()
            await self.flush()

    def wake(self) -> None:
        self._kick.set()

    async def flush(self) -> None:
        async with self._lock:
            while self._rows:
                batch, self._rows = self._rows, []
                by_partition: dict[int, list[tuple[Running, Row]]] = {}
                for partition, run, row in batch:
                    by_partition.setdefault(partition, []).append((run, row))
                for partition, rows in by_partition.items():
                    flags = await self._commit(partition, [row for _, row in rows])
                    for (run, row), applied in zip(rows, flags, strict=True):
                        if row[0] != "P":
                            self._retire(run, bool(applied))

    async def _commit(self, partition: int, rows: list[Row]) -> list[int]:
        delay = 0.05
        while True:  # Redis comes back, or the process dies and the task is reclaimed
            try:
                return await self.store.commit(partition, self.consumer, rows)
            except RedisUnavailable as exc:
                self.trouble(f"commit of {len(rows)} ops", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def trouble(self, where: str, exc: Exception) -> None:
        """Log a Redis outage at most every few seconds, not once per loop turn."""
        now = time.monotonic()
        if now - self._last_trouble_log >= 5.0:
            self._last_trouble_log = now
            log.warning("%s: %s; retrying until Redis is back", where, exc)


class Sink:
    """The ``ProgressSink`` of one call: deltas are coalesced, notices go out in order."""

    __slots__ = ("_outbox", "_run")

    def __init__(self, outbox: Outbox, run: Running) -> None:
        self._outbox = outbox
        self._run = run

    def delta(self, text: str) -> None:
        run = self._run
        if text and not run.lost:
            run.buffer.append(text)
            if not run.streamed:
                # the first token goes out at once (time to first token), the rest are
                # coalesced for PROGRESS_FLUSH_S
                run.streamed = True
                self._outbox.flush_buffer(run)
            else:
                self._outbox.progress_due()

    def notice(self, kind: str, data: Mapping[str, Any]) -> None:
        if not self._run.lost:
            self._outbox.flush_buffer(self._run)
            self._outbox.op(self._run, "P", {"notice": kind, "detail": dict(data)})


def error_data(run: Running, error_class: str, message: str) -> dict[str, Any]:
    return {"error_class": error_class, "message": message, "provider": run.provider}


def succeeded_data(run: Running, result: ProviderResult, elapsed: float) -> dict[str, Any]:
    """``TaskSucceeded.data`` of a call (built by hand: this is the hot path)."""
    u = result.usage
    return {
        "attempt": run.held.attempt,
        "provider": result.provider,
        "model": result.model,
        "usage": {
            "input_tokens": u.input_tokens,
            "output_tokens": u.output_tokens,
            "cached_tokens": u.cached_tokens,
            "reasoning_tokens": u.reasoning_tokens,
        },
        "cost_usd": result.cost_usd,
        "finish_reason": result.finish_reason,
        "result": {
            "text": result.text,
            "images": [
                {
                    "url": i.url,
                    "width": i.width,
                    "height": i.height,
                    "author": i.author,
                    "source_url": i.source_url,
                    "description": i.description,
                }
                for i in result.images
            ],
        },
        "latency_ms": int(elapsed * 1000),
    }
