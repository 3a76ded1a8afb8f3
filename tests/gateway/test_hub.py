"""The hub's catch-up merge: replay and live delivery overlap, and each event goes out once."""

from __future__ import annotations

import asyncio

from gateway.hub import Hub, Subscription
from gateway.outbox import Item, Outbox
from gateway.protocol import Target
from gateway.settings import GatewaySettings
from tests.conftest import Engine


async def test_events_arriving_live_during_replay_are_delivered_once_in_order(
    engine: Engine,
) -> None:
    """Live copies of replayed events are dropped; events after the replay are kept."""
    for i in range(6):
        await engine.client.submit(f"p{i}")
    store = engine.client.store
    hub = Hub(store, GatewaySettings(replay_chunk=1))
    outbox = Outbox(1000, 2**24, lambda: None)
    sub = Subscription(Target("tenant", "default"), outbox, 1000)
    log = store.keys(0).log

    async def live_feed() -> None:
        # what the XREAD loop would do meanwhile: deliver entries, some already replayed
        for eid, fields in await store.entries(log):
            hub.dispatch(Item(0, eid, fields))
            await asyncio.sleep(0)
        await engine.client.submit("after")
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
    assert sent == await engine.log()
    assert len(sent) == 7
