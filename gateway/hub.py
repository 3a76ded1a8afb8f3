"""The fan-out: ONE read loop over every partition's event log per gateway process (one XREAD
on a standalone Redis, one per partition on a cluster: ``engine.core.logreader``), feeding
the outboxes of local subscribers (WebSocket and SSE). A subscriber never owns a Redis
connection and never slows the loop down: delivery is a non-blocking put into its outbox.

Resume without gap or duplicate (``subscribe``): the subscription is registered first with a
*pending* list (live events for it are parked there), then the log is replayed with XRANGE
from ``since`` to its end, then the parked events are released. Every event is accepted at
most once per partition by comparing stream ids with the last one delivered, so the overlap
between replay and live delivery is dropped and nothing between them is missed.

The newest entries the loop dispatched (``recent_entries`` per partition) stay in memory: a
replay that starts within them (the common case — an OpenAI request subscribing right after
its submit, a WebSocket reconnecting) is served from there, synchronously, with no Redis
command; the ring holds every dispatched entry after its ``floor``, so nothing is skipped.

An entry the hub cannot decode (or of an unknown type) is counted, logged once and skipped
(``engine.core.tolerant``); the loop never stops on one, and its cursor moves past it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from engine.core import tolerant
from engine.core.keys import PartitionKeys
from engine.core.logreader import LogReader
from engine.core.store import Store
from engine.errors import EngineError, EventDecodeError
from gateway import protocol
from gateway.outbox import Item, Outbox
from gateway.protocol import StreamId, Target, parse_id
from gateway.settings import GatewaySettings
from gateway.since import log_bounds

log = logging.getLogger("aiis.gateway")

Listener = Callable[[Item], None]


class Subscription:
    """One subscribe request of one connection: its filter, outbox and per-partition cursor."""

    __slots__ = ("finished", "last", "max_pending", "outbox", "pending", "positions", "target")

    def __init__(self, target: Target, outbox: Outbox, max_pending: int) -> None:
        self.target = target
        self.outbox = outbox
        self.last: dict[int, StreamId] = {}
        self.pending: list[Item] | None = None
        self.max_pending = max_pending
        self.finished = False  # a task subscription ends after the task's terminal event
        self.positions = False  # told the hub's position now and then (WebSocket tenant subs)

    def matches(self, fields: dict[bytes, bytes]) -> bool:
        if self.target.kind == "task":
            return fields.get(b"task") == self.target.value.encode()
        return self.target.value == "*" or fields.get(b"tenant") == self.target.value.encode()

    def offer(self, item: Item) -> bool:
        """Live delivery: parked while catching up, else delivered unless already sent."""
        if self.pending is not None:
            if len(self.pending) >= self.max_pending:
                self.outbox.overflow()
            else:
                self.pending.append(item)
            return False
        return self.deliver(item)

    def deliver(self, item: Item) -> bool:
        last = self.last.get(item.partition)
        if self.finished or (last is not None and item.sid <= last):
            return False
        self.last[item.partition] = item.sid
        if item.terminal and self.target.kind == "task":
            self.finished = True
        return self.outbox.put(item)


class Hub:
    """Reads every partition's log once and fans each entry out to matching subscriptions."""

    def __init__(self, store: Store, gw: GatewaySettings) -> None:
        self.store = store
        self.gw = gw
        namespace = store.settings.namespace
        self.logs = [PartitionKeys(namespace, p).log for p in range(len(store.partitions))]
        self.reader = LogReader(store.redis, namespace, len(self.logs))
        self.by_task: dict[str, set[Subscription]] = {}
        self.by_tenant: dict[str, set[Subscription]] = {}
        self.listeners: list[Listener] = []
        self.cursors: dict[int, str] = {}
        # per partition: the newest dispatched entries, and the id after which the ring holds
        # every one of them (entries up to the floor were dropped, or generated before the
        # start — even if trimmed since: the archive keeps a task's, the ring cannot)
        self.recent: dict[int, deque[tuple[Item, int]]] = {}  # (entry, its size)
        self.recent_size: dict[int, int] = {}
        self.floor: dict[int, StreamId] = {}
        self.replayed_from_memory = 0
        self.events_read = 0
        self.deliveries = 0
        self.decode_errors = 0
        self.connected = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._positions_due = 0.0  # monotonic time the next cursors frames may go out
        self._positions_told: dict[int, str] = {}

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start reading after each log's current last entry."""
        for p, key in enumerate(self.logs):
            newest = await self.store.entries(key, count=1, reverse=True)
            self.cursors[p] = newest[0][0].decode() if newest else "0-0"
            self.recent[p] = deque()
            self.recent_size[p] = 0
            # not the newest entry: a log trimmed empty (archived) generated ids up to here
            _, last, _ = await log_bounds(self.store, p)
            floor = parse_id(last)
            if floor is not None and floor != (0, 0):  # else: from the first entry read
                self.floor[p] = floor
        self.connected = True
        self._task = asyncio.create_task(self._run(), name="gateway-hub")

    async def stop(self) -> None:
        if self._task is not None:
            # redis-py can swallow the cancellation of a blocked XREAD (redis-py#2028): the
            # loop also checks the flag after every read, so it ends within one block
            self._stopping = True
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.reader.aclose()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                batch = await self.reader.read(
                    self.cursors, self.gw.read_count, self.gw.read_block_ms
                )
            except EngineError as exc:
                if self.connected:
                    log.warning("event log unreadable, retrying: %s", exc)
                self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self.connected, backoff = True, 0.1
            for partition, entries in batch:
                for eid, fields in entries:
                    item = Item(partition, eid, fields)
                    self.dispatch(item)
                    self._remember(item)
                self.cursors[partition] = entries[-1][0].decode()
            self._tell_positions()
            await asyncio.sleep(0)  # let writers run between batches

    def _tell_positions(self) -> None:
        """Every ``cursors_interval_s`` while the log moves: each live tenant subscription that
        asked for it hears the hub's position in every partition. Everything up to it was
        dispatched (in order, into the same outbox), so a client resumes there without a gap,
        also in a partition where its tenant has had no event for long (the log below its
        start may be archived and trimmed by then)."""
        now = time.monotonic()
        if now < self._positions_due or self.cursors == self._positions_told:
            return
        self._positions_due = now + self.gw.cursors_interval_s
        self._positions_told = dict(self.cursors)
        ids = [self.cursors[p] for p in sorted(self.cursors)]
        for tenant, subs in self.by_tenant.items():
            told = [s for s in subs if s.positions and s.pending is None and not s.finished]
            if told:
                frame = protocol.cursors(tenant, ids)
                for sub in told:
                    sub.outbox.put(frame)

    def _remember(self, item: Item) -> None:
        p = item.partition
        ring = self.recent.get(p)
        if ring is None or self.gw.recent_entries == 0:
            return
        if p not in self.floor:
            self.floor[p] = item.sid  # a log that did not exist at the start
        size = sum(len(k) + len(v) for k, v in item.fields.items())
        ring.append((item, size))
        self.recent_size[p] += size
        while ring and (
            len(ring) > self.gw.recent_entries or self.recent_size[p] > self.gw.recent_bytes
        ):
            dropped, dropped_size = ring.popleft()
            self.recent_size[p] -= dropped_size
            self.floor[p] = dropped.sid

    # --- fan-out ---------------------------------------------------------------------------

    def _matching(self, item: Item) -> list[Subscription]:
        found: list[Subscription] = []
        for index, key in ((self.by_task, item.task_id), (self.by_tenant, item.tenant)):
            subs = index.get(key.decode(errors="replace"))  # not UTF-8: matches no one
            if subs:
                found.extend(subs)
        found.extend(self.by_tenant.get("*", ()))
        return found

    def dispatch(self, item: Item) -> None:
        self.events_read += 1
        for listener in self.listeners:
            listener(item)
        subs = self._matching(item)
        if not subs:
            return
        try:
            item.check()  # decode once, before any outbox sees it
        except EventDecodeError as exc:
            self.decode_errors += 1
            tolerant.skipped("hub", item.id, exc)
            return
        sent_to: set[int] = set()
        for sub in subs:
            if id(sub.outbox) in sent_to and sub.pending is None:
                # overlapping live subscriptions of one connection: the event goes out once
                sub.last[item.partition] = item.sid
                continue
            if sub.offer(item):
                self.deliveries += 1
                sent_to.add(id(sub.outbox))
            if sub.finished:
                self.remove(sub)

    # --- subscriptions ---------------------------------------------------------------------

    def _index(self, target: Target) -> dict[str, set[Subscription]]:
        return self.by_task if target.kind == "task" else self.by_tenant

    def add(self, sub: Subscription) -> None:
        self._index(sub.target).setdefault(sub.target.value, set()).add(sub)

    def remove(self, sub: Subscription) -> None:
        index = self._index(sub.target)
        subs = index.get(sub.target.value)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del index[sub.target.value]

    def count(self) -> dict[str, int]:
        return {
            "task": sum(len(s) for s in self.by_task.values()),
            "tenant": sum(len(s) for s in self.by_tenant.values()),
        }

    async def subscribe(self, sub: Subscription, starts: dict[int, str] | None) -> None:
        """Register ``sub``; with ``starts`` (partition -> id), first replay the log after those
        ids (exclusive), then switch to live delivery with no gap and no duplicate."""
        if not starts:
            self.add(sub)
            return
        sub.pending = []
        self.add(sub)
        try:
            # first, synchronously, what the in-memory ring covers: nothing can arrive between
            # the ring's newest entry and this subscription's registration
            remote = []
            for partition, after in sorted(starts.items()):
                if not self._replay_recent(sub, partition, after):
                    remote.append((partition, after))
            for partition, after in remote:
                if sub.finished or sub.outbox.overflowed:
                    break
                await self._replay(sub, partition, after)
            parked, sub.pending = sub.pending, None
            for item in parked:
                if sub.deliver(item):
                    self.deliveries += 1
        finally:
            sub.pending = None
            if sub.finished or sub.outbox.overflowed:
                self.remove(sub)

    def _replay_recent(self, sub: Subscription, partition: int, after: str) -> bool:
        """Replay ``partition`` after ``after`` from the ring; False when the ring does not
        hold every entry after it (the log is read instead)."""
        ring, floor = self.recent.get(partition), self.floor.get(partition)
        if ring is None or floor is None:
            return False
        since = parse_id(after)
        if since is None or since < floor:
            return False
        newer: list[Item] = []
        for item, _ in reversed(ring):
            if item.sid <= since:
                break
            newer.append(item)
        self.replayed_from_memory += 1
        for item in reversed(newer):
            if sub.matches(item.fields) and self._replayed(sub, item):
                break
        return True

    def _replayed(self, sub: Subscription, item: Item) -> bool:
        """Deliver one replayed entry that matches ``sub``; True once ``sub`` wants no more."""
        try:
            item.check()  # before ``deliver`` marks a terminal one as delivered
        except EventDecodeError as exc:
            self.decode_errors += 1
            tolerant.skipped("hub", item.id, exc)
            return False
        if sub.deliver(item):
            self.deliveries += 1
        return sub.finished or sub.outbox.overflowed

    async def _replay(self, sub: Subscription, partition: int, after: str) -> None:
        key = self.logs[partition]
        cursor = after
        while True:
            if sub.target.kind == "task":  # with the events kept once the log was archived
                entries = await self.store.history(
                    partition, sub.target.value, cursor, self.gw.replay_chunk
                )
            else:
                entries = await self.store.entries(
                    key, f"({cursor}", "+", count=self.gw.replay_chunk
                )
            if not entries:
                return
            for eid, fields in entries:
                if sub.matches(fields) and self._replayed(sub, Item(partition, eid, fields)):
                    return
            cursor = entries[-1][0].decode()
            await sub.outbox.wait_room()
