"""Reading a partition's log from Redis: raw pages, the next one requested while the caller
folds the current one."""

from __future__ import annotations

from contextlib import aclosing

import redis.asyncio as aioredis

from projections.source import history, stream_page
from projections.storage import ShardStore

from .conftest import Log, requested


async def _ids(log: Log, n: int) -> list[str]:
    return [await log.add("TaskRequested", f"t{i}", requested()) for i in range(n)]


async def test_history_covers_the_log_once_in_order_across_pages(
    store: ShardStore, log: Log
) -> None:
    """Pages of a few entries each hold every entry exactly once, in log order, as
    ``[id, [field, value, …]]``; with ``until`` no page starts after it."""
    want = await _ids(log, 23)
    ns = store.namespace
    pages = [p async for p in history(store.redis, ns, 0, None, page_size=5)]
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [e[0].decode() for p in pages for e in p] == want
    assert pages[0][0][1][:2] == [b"type", b"TaskRequested"]
    until = want[11]
    pages = [p async for p in history(store.redis, ns, 0, None, until=until, page_size=5)]
    got = [e[0].decode() for p in pages for e in p]
    assert got[:12] == want[:12] and len(pages) == 3
    after = [
        e[0].decode() async for p in history(store.redis, ns, 0, None, after=want[20]) for e in p
    ]
    assert after == want[21:]


async def test_an_abandoned_read_leaves_the_client_usable(
    store: ShardStore, log: Log, redis: aioredis.Redis
) -> None:
    """Stopping after the first page (a request for the next one in flight) does not leave a
    stale reply on a pooled connection: later commands get their own replies."""
    want = await _ids(log, 12)
    async with aclosing(history(redis, store.namespace, 0, None, page_size=5)) as pages:
        async for _ in pages:
            break
    await redis.set(f"{store.namespace}:probe", b"ok")
    assert await redis.get(f"{store.namespace}:probe") == b"ok"
    page = await stream_page(redis, store.namespace, 0, want[9], 10)
    assert [e[0].decode() for e in page] == want[10:]
