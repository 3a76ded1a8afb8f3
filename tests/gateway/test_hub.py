"""The hub's catch-up merge: replay and live delivery overlap, and each event goes out once;
its read loop follows every partition, on a standalone Redis and on a 3-master cluster."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect

from engine.client import Client
from engine.core.keys import partition_of
from engine.core.logreader import LogReader, is_cluster
from engine.settings import Settings
from gateway.hub import Hub, Subscription
from gateway.outbox import Item, Outbox
from gateway.protocol import Target
from gateway.settings import GatewaySettings
from tests.conftest import TOPOLOGIES, Engine, Topology
from tests.gateway.conftest import MakeGateway, events_until_terminal, recv, request

pytestmark = pytest.mark.parametrize(*TOPOLOGIES, indirect=True)


async def test_events_arriving_live_during_replay_are_delivered_once_in_order(
    engine: Engine,
) -> None:
    """Live copies of replayed events are dropped; events after the replay are kept."""
    store = engine.client.store
    log = store.keys(0).log

    async def submit_to_partition_0() -> None:
        while partition_of(await engine.client.submit("p"), engine.settings.partitions) != 0:
            pass

    for _ in range(6):
        await submit_to_partition_0()
    hub = Hub(store, GatewaySettings(replay_chunk=1))
    outbox = Outbox(1000, 2**24, lambda: None)
    sub = Subscription(Target("tenant", "default"), outbox, 1000)

    async def live_feed() -> None:
        # what the read loop would do meanwhile: deliver entries, some already replayed
        for eid, fields in await store.entries(log):
            hub.dispatch(Item(0, eid, fields))
            await asyncio.sleep(0)
        await submit_to_partition_0()
        for eid, fields in await store.entries(log, count=1, reverse=True):
            hub.dispatch(Item(0, eid, fields))

    feeder = asyncio.create_task(live_feed())
    await hub.subscribe(sub, {0: "0-0"})
    await feeder
    sent = []
    while len(outbox):
        msg = await outbox.get()
        assert isinstance(msg, Item)
        sent.append(msg.id)
    assert sent == [eid.decode() for eid, _ in await store.entries(log)]
    assert len(sent) == 7


async def test_a_tenant_subscriber_gets_every_partitions_events_in_order(
    engine: Engine, topology: Topology, make_gateway: MakeGateway
) -> None:
    """A gateway started on the topology (its own client from the one connection factory)
    delivers a tenant's events of every partition, each partition's in log order, to the end."""
    engine.start_worker()
    gateway = await make_gateway(engine.settings)
    assert gateway.ctx is not None
    assert is_cluster(gateway.ctx.hub.store.redis) is topology.cluster
    async with connect(gateway.ws_url) as ws:
        assert (await request(ws, op="subscribe", tenant="default"))["op"] == "subscribed"
        ids = {await engine.client.submit(f"t{i}") for i in range(16)}
        got = await events_until_terminal(ws, ids)
    partitions = {partition_of(t, engine.settings.partitions) for t in ids}
    assert len(partitions) == engine.settings.partitions  # the tasks spread over all of them
    for p in partitions:
        mine = [e["id"] for e in got if partition_of(e["task_id"], engine.settings.partitions) == p]
        store = engine.client.store
        assert mine == [eid.decode() for eid, _ in await store.entries(store.keys(p).log)]


async def test_the_log_reader_returns_each_partition_once_and_in_order(
    engine: Engine, topology: Topology
) -> None:
    """LogReader over every partition: each entry once, in log order per partition, whether
    one XREAD (standalone) or one per partition (cluster) answers; blocked reads close."""
    store = engine.client.store
    reader = LogReader(store.redis, engine.settings.namespace, engine.settings.partitions)
    assert reader.per_partition is topology.cluster
    for i in range(20):
        await engine.client.submit(f"r{i}")
    cursors = dict.fromkeys(range(engine.settings.partitions), "0-0")
    seen: dict[int, list[str]] = {p: [] for p in cursors}
    try:
        while batch := await reader.read(cursors, 3, block_ms=50):
            for p, entries in batch:
                seen[p] += [eid.decode() for eid, _ in entries]
                cursors[p] = entries[-1][0].decode()
        for p in cursors:
            want = [eid.decode() for eid, _ in await store.entries(store.keys(p).log)]
            assert seen[p] == want
        assert sum(map(len, seen.values())) == 20
        # a blocked read is in flight (cluster); moving a cursor back reads from there again
        assert await reader.read(cursors, 100, block_ms=50) == []
        cursors[0] = "0-0"
        again = []
        for _ in range(20):  # another partition's blocked read may end first, empty: read on
            if again := await reader.read(cursors, 100, block_ms=50):
                break
        assert [p for p, _ in again] == [0]
        assert [eid.decode() for eid, _ in again[0][1]] == seen[0]
    finally:
        await reader.aclose()


async def test_a_gateway_without_aiis_partitions_reads_every_partition_there_is(
    topology: Topology, make_gateway: MakeGateway
) -> None:
    """A gateway whose environment does not set AIIS_PARTITIONS adopts the deployment's count
    (recorded by the first writer), so a tenant subscriber gets the events of every partition —
    not only those of partition 0."""
    deployment = topology.settings(partitions=3)
    producer = Client.from_url(topology.url, deployment)
    try:
        await producer.adopt_deployment()  # the first writer records 3 partitions
        unset = Settings(**deployment.model_dump(exclude={"partitions"}))
        assert "partitions" not in unset.model_fields_set and unset.partitions == 1
        gateway = await make_gateway(unset)
        async with connect(gateway.ws_url) as ws:
            assert (await request(ws, op="subscribe", tenant="default"))["op"] == "subscribed"
            ids = {await producer.submit(f"p{i}") for i in range(12)}
            assert len({partition_of(t, 3) for t in ids}) == 3
            got: set[str] = set()
            async with asyncio.timeout(15):
                while got != ids:
                    msg = await recv(ws)
                    if msg["op"] == "event" and msg["event"]["type"] == "TaskRequested":
                        got.add(msg["event"]["task_id"])
    finally:
        await producer.aclose()


async def _hub_caught_up(hub: Hub, partitions: int) -> None:
    """Wait until the running hub has dispatched every partition's newest entry."""
    async with asyncio.timeout(10):
        while True:
            newest = {}
            for p in range(partitions):
                top = await hub.store.entries(hub.logs[p], count=1, reverse=True)
                newest[p] = top[0][0].decode() if top else "0-0"
            if all(hub.cursors.get(p) == newest[p] for p in newest):
                return
            await asyncio.sleep(0.02)


async def _drain(outbox: Outbox) -> list[tuple[int, str]]:
    """(partition, entry id) of each queued event: ids repeat across partitions' logs."""
    sent = []
    while len(outbox):
        msg = await outbox.get()
        assert isinstance(msg, Item)
        sent.append((msg.partition, msg.id))
    return sent


async def test_a_resume_within_the_recent_entries_is_served_from_memory_without_a_gap(
    engine: Engine,
) -> None:
    """The running hub keeps the entries it dispatched: a subscriber resuming after one of
    them is replayed from memory (no XRANGE), gets every later event once and in order, and
    keeps receiving live events after its replay."""
    store = engine.client.store
    n = engine.settings.partitions
    hub = Hub(store, GatewaySettings(read_block_ms=50))
    await hub.start()
    try:
        for i in range(8):
            await engine.client.submit(f"m{i}")
        await _hub_caught_up(hub, n)
        log0 = [eid.decode() for eid, _ in await store.entries(store.keys(0).log)]
        assert len(log0) >= 2
        since = {p: hub.cursors[p] for p in range(n)}
        since[0] = log0[0]  # partition 0 resumes after its first entry
        outbox = Outbox(1000, 2**24, lambda: None)
        sub = Subscription(Target("tenant", "default"), outbox, 1000)
        await hub.subscribe(sub, since)
        assert hub.replayed_from_memory == n
        assert await _drain(outbox) == [(0, eid) for eid in log0[1:]]
        later = [await engine.client.submit(f"live{i}") for i in range(4)]
        await _hub_caught_up(hub, n)
        sent = await _drain(outbox)
        assert len(sent) == len(later) and len(set(sent)) == len(sent)
    finally:
        await hub.stop()


@pytest.mark.parametrize("room", [{"recent_entries": 2}, {"recent_bytes": 1500}])
async def test_a_resume_older_than_the_recent_entries_reads_the_log(
    engine: Engine, room: dict[str, int]
) -> None:
    """With room for only a few entries per partition (by count or by bytes), a resume from
    the log's start is not in memory: it is read from Redis, complete."""
    store = engine.client.store
    n = engine.settings.partitions
    hub = Hub(store, GatewaySettings(read_block_ms=50, **room))
    await hub.start()
    try:
        for i in range(12):
            await engine.client.submit(f"o{i}")
        await _hub_caught_up(hub, n)
        outbox = Outbox(1000, 2**24, lambda: None)
        sub = Subscription(Target("tenant", "default"), outbox, 1000)
        await hub.subscribe(sub, dict.fromkeys(range(n), "0-0"))
        assert hub.replayed_from_memory == 0
        sent = set(await _drain(outbox))
        want = set()
        for p in range(n):
            want |= {(p, eid.decode()) for eid, _ in await store.entries(store.keys(p).log)}
        assert sent == want and len(want) == 12
        assert all(len(ring) <= hub.gw.recent_entries for ring in hub.recent.values())
        assert all(size <= hub.gw.recent_bytes for size in hub.recent_size.values())
        assert all(sum(s for _, s in hub.recent[p]) == hub.recent_size[p] for p in range(n))
    finally:
        await hub.stop()
