"""Autoscaling of worker processes: a pure policy over queue signals, and the reader of those
signals from Redis.

The policy grows the pool when work waits (the oldest waiting task is older than
``grow_after_s``, or more tasks wait than the pool can start), by enough processes to hold the
backlog, never past ``maximum``; it holds still while providers rate-limit (more processes would
only add waiting); and it shrinks one process at a time after ``idle_s`` with nothing waiting
and the remaining processes able to hold what is in flight, never below ``minimum``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from dataclasses import dataclass, replace
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from engine.core.keys import GROUP, PRIORITIES, PartitionKeys, autoscale_key

log = logging.getLogger("aiis.autoscale")

RATE_LIMITED_SHARE = 0.1  # hold growth while this share of recent outcomes were rate-limited


@dataclass(frozen=True, slots=True)
class Signals:
    waiting: int  # entries not yet handed to any worker
    in_flight: int  # handed out, not finished
    oldest_wait_s: float  # age of the oldest waiting entry
    finished: int = 0  # outcomes since the previous reading
    rate_limited: int = 0  # of which rate-limited retries


@dataclass(frozen=True, slots=True)
class ScalePolicy:
    minimum: int
    maximum: int
    per_process: int  # in-flight capacity of one process (its concurrency)
    grow_after_s: float = 1.0
    idle_s: float = 10.0
    cooldown_s: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"autoscale needs 1 <= MIN <= MAX, got {self.minimum}:{self.maximum}")


@dataclass(frozen=True, slots=True)
class ScaleState:
    target: int
    changed_at: float = -1e9
    idle_since: float | None = None
    reason: str = "start"


def decide(policy: ScalePolicy, state: ScaleState, s: Signals, now: float) -> ScaleState:
    """The next state of the pool given the latest signals (pure: no clock, no I/O)."""
    current = state.target
    busy = s.waiting > 0 or s.in_flight > 0
    idle_since = None if s.waiting > 0 else (now if state.idle_since is None else state.idle_since)
    state = replace(state, idle_since=idle_since)
    if now - state.changed_at < policy.cooldown_s:
        return state
    limited = s.finished > 0 and s.rate_limited / s.finished >= RATE_LIMITED_SHARE
    pressed = s.oldest_wait_s >= policy.grow_after_s or s.waiting > policy.per_process * current
    if pressed and current < policy.maximum:
        if limited:
            return replace(state, reason="hold: providers are rate-limiting")
        need = math.ceil((s.waiting + s.in_flight) / policy.per_process)
        target = min(policy.maximum, max(current + 1, need))
        return ScaleState(
            target, now, None, f"grow: {s.waiting} waiting, oldest {s.oldest_wait_s:.1f}s"
        )
    fits = s.in_flight <= policy.per_process * (current - 1) // 2
    if (
        current > policy.minimum
        and idle_since is not None
        and now - idle_since >= policy.idle_s
        and fits
    ):
        reason = "shrink: idle" if not busy else f"shrink: {s.in_flight} in flight fit in fewer"
        return ScaleState(current - 1, now, now, reason)
    return state


class SignalReader:
    """Reads ``Signals`` from Redis: queue depth and age per work stream, outcomes from the log."""

    def __init__(self, client: redis.Redis, partitions: list[PartitionKeys]) -> None:
        self.redis = client
        self.partitions = partitions
        self._cursors: dict[str, str] = {}

    def read(self, now_ms: int | None = None) -> Signals:
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        waiting = in_flight = 0
        oldest_ms = now_ms
        for keys in self.partitions:
            for priority in PRIORITIES:
                queue = keys.queue(priority)
                length, groups = self._queue_info(queue)
                group = next((g for g in groups if _s(g.get("name")) == GROUP), None)
                pending = int(group["pending"]) if group else 0
                in_flight += pending
                waiting += max(0, length - pending)
                last = _s(group["last-delivered-id"]) if group else "0-0"
                first: Any = self.redis.xrange(queue, f"({last}", "+", count=1)
                if first:
                    oldest_ms = min(oldest_ms, int(_s(first[0][0]).split("-")[0]))
        finished, limited = self._outcomes()
        return Signals(waiting, in_flight, max(0.0, (now_ms - oldest_ms) / 1000), finished, limited)

    def _queue_info(self, queue: str) -> tuple[int, list[dict[str, Any]]]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(queue)
        pipe.xinfo_groups(queue)
        try:
            length, groups = pipe.execute()
        except redis.ResponseError:  # the stream does not exist yet
            return 0, []
        return int(length), list(groups)

    def _outcomes(self) -> tuple[int, int]:
        finished = limited = 0
        for keys in self.partitions:
            cursor = self._cursors.get(keys.log)
            if cursor is None:  # start from now: history says nothing about the present
                latest: Any = self.redis.xrevrange(keys.log, count=1)
                self._cursors[keys.log] = _s(latest[0][0]) if latest else "0-0"
                continue
            reply: Any = self.redis.xread({keys.log: cursor}, count=10_000)
            for eid, fields in reply[0][1] if reply else []:
                self._cursors[keys.log] = _s(eid)
                kind = fields.get(b"type")
                if kind in (b"TaskSucceeded", b"TaskFailed", b"TaskDeadLettered"):
                    finished += 1
                elif kind == b"TaskRetryScheduled":
                    finished += 1
                    if b'"RateLimited"' in fields.get(b"data", b""):
                        limited += 1
        return finished, limited


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Autoscaler:
    """``scale(current) -> target`` for ``engine.runtime.supervisor.Pool``: reads signals, decides,
    logs each change and publishes the pool's state to Redis (``aiis stats`` shows it)."""

    def __init__(
        self, client: redis.Redis, namespace: str, partitions: list[PartitionKeys],
        policy: ScalePolicy,
    ) -> None:  # fmt: skip
        self.reader = SignalReader(client, partitions)
        self.policy = policy
        self.state = ScaleState(policy.minimum)
        self.key = autoscale_key(namespace, f"{socket.gethostname()}-{os.getpid()}")
        self.redis = client

    def __call__(self, current: int) -> int:
        try:
            signals = self.reader.read()
        except redis.RedisError as exc:
            log.warning("autoscale: cannot read queue signals (%s); keeping %d", exc, current)
            return current
        before = self.state.target
        self.state = decide(self.policy, self.state, signals, time.monotonic())
        if self.state.target != before:
            log.info("autoscale %d -> %d (%s)", before, self.state.target, self.state.reason)
        self._publish(current, signals)
        return self.state.target

    def _publish(self, current: int, s: Signals) -> None:
        fields: dict[FieldT, EncodableT] = {
            "current": current,
            "target": self.state.target,
            "min": self.policy.minimum,
            "max": self.policy.maximum,
            "reason": self.state.reason,
            "waiting": s.waiting,
            "in_flight": s.in_flight,
            "oldest_wait_s": round(s.oldest_wait_s, 3),
            "ts": int(time.time() * 1000),
        }
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(self.key, mapping=fields)
            pipe.expire(self.key, 30)
            pipe.execute()
        except redis.RedisError:
            pass  # the pool keeps working; the published state just ages out


def parse_range(text: str) -> tuple[int, int]:
    """``"MIN:MAX"`` → (min, max), with a clear error."""
    low, sep, high = text.partition(":")
    try:
        if not sep:
            raise ValueError
        minimum, maximum = int(low), int(high)
    except ValueError:
        raise ValueError(f"--autoscale wants MIN:MAX (e.g. 1:4), got {text!r}") from None
    if not 1 <= minimum <= maximum <= 256:
        raise ValueError(f"--autoscale needs 1 <= MIN <= MAX <= 256, got {text!r}")
    return minimum, maximum
