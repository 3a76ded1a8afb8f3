"""The engine's only door to Redis: Lua scripts for every state change, plain reads for the rest.
Redis errors are translated here (``translate_errors``) and chained: a lost connection or a
refusal that passes (READONLY after a failover, CLUSTERDOWN, TRYAGAIN) into
``RedisUnavailable``, any other refusal (WRONGTYPE, a script error) into ``RedisCommandError``;
no ``redis.*`` exception escapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    ReadOnlyError,
    RedisClusterException,
    RedisClusterUnreachableError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from engine.core.events import StateCode
from engine.core.keys import (
    GROUP,
    PRIORITIES,
    PartitionKeys,
    all_partitions,
    config_key,
    correlation_key,
    meta_key,
)
from engine.core.script_args import (
    CancelReply,
    CommitOp,
    FetchResult,
    RenewHeld,
    Started,
    SubmitItem,
    build_cancel_args,
    build_commit_args,
    build_history_args,
    build_janitor_args,
    build_renew_args,
    build_submit_args,
    parse_cancel_reply,
    parse_commit_reply,
    parse_fetch_reply,
    parse_history_reply,
    parse_janitor_reply,
    parse_renew_reply,
    parse_submit_reply,
)
from engine.core.scripts import lua_source
from engine.errors import ConfigError, RedisCommandError, RedisUnavailable

__all__ = ["FetchResult", "Started", "StateWord", "Store", "translate_errors"]
from engine.settings import DEPLOYMENT_LIMITS, Settings

Entry = tuple[bytes, dict[bytes, bytes]]  # a stream entry as redis-py returns it

SCRIPTS = ("submit", "fetch", "commit", "renew", "cancel", "janitor", "history")
JANITOR_BATCH = 1000  # tasks forgotten per janitor call


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# refusals that a failover or a resharding ends: as good as unreachable for now
_PASSING = (
    ReadOnlyError,
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
    RedisClusterUnreachableError,
)
# redis-py prefixes a pipeline's error with the command and its arguments: keep only Redis' words
_PIPELINE = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.DOTALL)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn every redis-py exception into an ``EngineError`` chained to it: ``RedisUnavailable``
    for lost connections and passing refusals, ``RedisCommandError`` for the rest.

    On a cluster, CLUSTERDOWN / MASTERDOWN / TRYAGAIN (a master restarting, a slot migrating)
    are error replies to redis-py but outages to us: every caller that survives a dropped
    connection survives them the same way.
    """
    try:
        yield
    except _PASSING as exc:
        raise RedisUnavailable(f"Redis unavailable: {type(exc).__name__}: {exc}") from exc
    except (ResponseError, RedisClusterException) as exc:
        said = _PIPELINE.sub("", str(exc))
        raise RedisCommandError(f"Redis refused a command: {said}") from exc
    except (RedisError, OSError) as exc:
        raise RedisUnavailable(f"Redis unavailable: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class StateWord:
    code: StateCode
    attempt: int
    tenant: str
    priority: str
    ref: str
    requested_id: str

    @classmethod
    def parse(cls, raw: bytes | str) -> StateWord:
        code, attempt, tenant, priority, ref, rid = _s(raw).split("|")
        return cls(StateCode(code), int(attempt), tenant, priority, ref, rid)


class Store:
    """Redis-backed event log and work queues of every partition."""

    def __init__(self, redis: aioredis.Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.partitions = all_partitions(settings.namespace, settings.partitions)
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(lua_source(name, prelude=True)) for name in SCRIPTS
        }

    @staticmethod
    def keys_of(settings: Settings) -> list[PartitionKeys]:
        return all_partitions(settings.namespace, settings.partitions)

    def keys(self, partition: int) -> PartitionKeys:
        return self.partitions[partition]

    async def _run(self, name: str, partition: int, consumer: str, *args: Any) -> Any:
        s = self.settings
        argv = [_now_ms(), consumer, s.max_deliveries, s.dlq_max_len, *args]
        with translate_errors():
            return await self._scripts[name](keys=self.keys(partition).script_keys, args=argv)

    # --- set-up ---------------------------------------------------------------------------

    async def deployment_partitions(self) -> int:
        """The deployment's partition count; this process's seeds it when none is recorded."""
        with translate_errors():
            meta = meta_key(self.settings.namespace)
            await self.redis.hsetnx(meta, "partitions", self.settings.partitions)
            return int(await self.redis.hget(meta, "partitions") or self.settings.partitions)

    def use_partitions(self, partitions: int) -> None:
        """Address ``partitions`` partitions (a producer adopting the deployment's count)."""
        self.settings = self.settings.model_copy(update={"partitions": partitions})
        self.partitions = all_partitions(self.settings.namespace, partitions)

    async def check_partitions(self) -> None:
        """Record the deployment's partition count, or refuse a different one (workers)."""
        stored = await self.deployment_partitions()
        if stored != self.settings.partitions:
            raise ConfigError(
                f"AIIS_PARTITIONS={self.settings.partitions} but this Redis holds data "
                f"written with {stored} partitions; changing it would mis-route tasks. "
                f"Use AIIS_PARTITIONS={stored} (or a fresh AIIS_NAMESPACE)."
            )

    async def prepare(self) -> None:
        """Check the deployment's partition count, seed the deployment's limits this
        environment sets (``engine.admission.policy``) and create the consumer groups."""
        await self.check_partitions()
        await seed_limits(self.redis, self.settings)
        with translate_errors():
            for keys in self.partitions:
                for priority in PRIORITIES:
                    with contextlib.suppress(ResponseError):  # BUSYGROUP: already there
                        await self.redis.xgroup_create(
                            keys.queue(priority), GROUP, id="0", mkstream=True
                        )

    # --- producer side ---------------------------------------------------------------------

    async def submit(
        self,
        partition: int,
        items: Sequence[SubmitItem],
        *,
        max_depth: int | None = None,
    ) -> list[Any]:
        """Accept tasks; see submit.lua. Returns ``[(status, value), …]`` per item.
        ``max_depth``: the deployment's queue depth limit (``engine.admission.policy``)."""
        depth = self.settings.queue_max_depth if max_depth is None else max_depth
        raw = await self._run("submit", partition, "", *build_submit_args(depth, items))
        return parse_submit_reply(raw)

    async def cancel(self, partition: int, task_id: str, tenant: str = "") -> CancelReply:
        raw = await self._run("cancel", partition, "", *build_cancel_args(task_id, tenant))
        return parse_cancel_reply(raw)

    # --- worker side -----------------------------------------------------------------------

    async def fetch(self, partition: int, consumer: str, free: int, order: str) -> FetchResult:
        raw = await self._run("fetch", partition, consumer, "read", free, order, 100)
        return parse_fetch_reply(raw)

    async def claim(
        self, partition: int, consumer: str, priority: str, cursor: str, count: int
    ) -> FetchResult:
        idle_ms = int(self.settings.visibility_timeout_s * 1000)
        raw = await self._run(
            "fetch", partition, consumer, "claim", priority, cursor, idle_ms, count
        )
        return parse_fetch_reply(raw)

    async def adopt(
        self, partition: int, consumer: str, entries: Sequence[tuple[str, str, str]]
    ) -> FetchResult:
        flat = [x for e in entries for x in e]
        raw = await self._run("fetch", partition, consumer, "adopt", len(entries), *flat)
        return parse_fetch_reply(raw)

    async def promote(self, partition: int, limit: int = 1000) -> None:
        await self._run("fetch", partition, "", "promote", limit)

    async def wait_for_work(
        self, partition: int, consumer: str, block_ms: int
    ) -> list[tuple[str, str, str]]:
        """Block until an entry arrives on any priority; returns ``(priority, id, task_id)``."""
        keys = self.keys(partition)
        streams = {keys.queue(p): ">" for p in PRIORITIES}
        by_key = {keys.queue(p): p.value for p in PRIORITIES}
        with translate_errors():
            reply: Any = await self.redis.xreadgroup(
                GROUP,
                consumer,
                streams,  # type: ignore[arg-type]
                count=1,
                block=block_ms,
            )
        out = []
        for stream, entries in reply or []:
            for eid, fields in entries:
                out.append((by_key[_s(stream)], _s(eid), _s(fields.get(b"t", b""))))
        return out

    async def commit(self, partition: int, consumer: str, ops: Sequence[CommitOp]) -> list[int]:
        raw = await self._run("commit", partition, consumer, *build_commit_args(ops))
        return parse_commit_reply(raw)

    async def renew(self, partition: int, consumer: str, held: Sequence[RenewHeld]) -> list[int]:
        raw = await self._run("renew", partition, consumer, *build_renew_args(held))
        return parse_renew_reply(raw)

    async def janitor(self, partition: int, cutoff_ms: int, limit: int = JANITOR_BATCH) -> int:
        """Forget up to ``limit`` finished tasks: those finished before ``cutoff_ms`` and the
        oldest beyond the partition's share of ``task_retained_max`` (see janitor.lua)."""
        s = self.settings
        cap = max(1, s.task_retained_max // s.partitions)
        raw = await self._run("janitor", partition, "", *build_janitor_args(cutoff_ms, limit, cap))
        return parse_janitor_reply(raw)

    async def forget_consumer(self, consumer: str) -> None:
        """Remove this consumer from every group once it holds nothing."""
        with translate_errors():
            for keys in self.partitions:
                for priority in PRIORITIES:
                    pending = await self.redis.xpending_range(
                        keys.queue(priority), GROUP, "-", "+", 1, consumername=consumer
                    )
                    if not pending:
                        await self.redis.xgroup_delconsumer(keys.queue(priority), GROUP, consumer)

    # --- reads -----------------------------------------------------------------------------

    async def state(self, partition: int, task_id: str) -> tuple[StateWord, bytes | None] | None:
        keys = self.keys(partition)
        with translate_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hget(keys.state, task_id)
                pipe.hget(keys.task, task_id)
                raw_state, record = await pipe.execute()
        if raw_state is None:
            return None
        return StateWord.parse(raw_state), record

    async def correlated(self, tenant: str, correlation_id: str) -> str | None:
        """The task id the correlation index holds for ``tenant``'s ``correlation_id`` (one GET
        per partition, concurrently; a reused id names its latest task in a partition), or
        None."""
        keys = [correlation_key(k.tag, tenant, correlation_id) for k in self.partitions]
        with translate_errors():
            found = await asyncio.gather(*(self.redis.get(k) for k in keys))
        return next((_s(f) for f in found if f is not None), None)

    async def entries(
        self,
        key: str,
        start: str = "-",
        end: str = "+",
        count: int | None = None,
        *,
        reverse: bool = False,
    ) -> list[Entry]:
        """Entries of any stream, oldest first (newest first with ``reverse``)."""
        with translate_errors():
            if reverse:
                found: Any = await self.redis.xrevrange(key, end, start, count=count)
            else:
                found = await self.redis.xrange(key, start, end, count=count)
        return cast(list[Entry], found)

    async def event_at(
        self, partition: int, event_id: str, *, task_id: str | None = None
    ) -> Entry | None:
        """The log entry ``event_id``; with ``task_id``, also once the log was archived and
        trimmed (from the events kept beside the task)."""
        if task_id is None:
            found = await self.entries(self.keys(partition).log, event_id, event_id)
        else:
            found = await self.history(partition, task_id, id_before(event_id), 1)
        return found[0] if found and found[0][0].decode() == event_id else None

    async def history(
        self, partition: int, task_id: str, after: str, count: int = 500
    ) -> list[Entry]:
        """Entries after ``after``: the task's kept events (its archived part), then the log's
        entries of every task, in one atomic read (history.lua). Never blocks."""
        raw = await self._run("history", partition, "", *build_history_args(task_id, after, count))
        return parse_history_reply(raw)

    async def read_log(
        self, partition: int, after: str, count: int = 500, block_ms: int | None = None
    ) -> list[Entry]:
        """Log entries strictly after ``after``."""
        with translate_errors():
            reply: Any = await self.redis.xread(
                {self.keys(partition).log: after}, count=count, block=block_ms
            )
        return list(reply[0][1]) if reply else []


async def seed_limits(redis: aioredis.Redis, settings: Settings) -> None:
    """Store the deployment limits ``settings`` sets explicitly (its environment) unless the
    deployment has them already: the first writer wins (``engine.admission.policy``)."""
    key = config_key(settings.namespace)
    with translate_errors():
        for name in sorted(set(DEPLOYMENT_LIMITS) & settings.model_fields_set):
            await redis.hsetnx(key, name, getattr(settings, name))


def _now_ms() -> int:
    return int(time.time() * 1000)


def id_before(stream_id: str) -> str:
    """The largest stream id smaller than ``stream_id`` (for inclusive XREAD starts)."""
    ms, _, seq = stream_id.partition("-")
    if int(seq or 0) > 0:
        return f"{ms}-{int(seq) - 1}"
    if int(ms) > 0:
        return f"{int(ms) - 1}-18446744073709551615"
    return "0-0"
