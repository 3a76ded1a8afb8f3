"""Reading a partition's event log: pages of raw entries strictly after an id, from the archive
segments first and then the stream, so a rebuild from zero works after the stream was trimmed.

Stream pages are read on one pooled connection with XRANGE sent by hand and its reply left as
hiredis parses it — ``[[id, [field, value, …]], …]`` of bytes — because redis-py's reply
callback (a dict per entry) cost about a third of a replay. While the caller folds one page, the
request for the next is already on the wire, so Redis works while we decode.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from engine.core.logreader import is_cluster
from engine.core.store import translate_errors
from projections import ids
from projections.archive import check_coverage, list_segments, segment_pages
from projections.fold import RawEntry
from projections.keys import log_key

PAGE = 5000


class _Reader:
    """XRANGE pages of one stream on one connection taken from the client's pool, at most one
    request in flight; ``close`` gives the connection back (dropping it if a reply is unread).

    A cluster client has no single pool (each node has its own, and a slot may move): there
    each page is an ordinary XRANGE routed by the client, still one request ahead."""

    def __init__(self, redis: aioredis.Redis, key: str) -> None:
        self.redis = redis
        self.cluster = is_cluster(redis)
        self.pool: Any = None if self.cluster else redis.connection_pool  # stubs: untyped
        self.key = key
        self.conn: Any = None
        self.pending = False
        self.inflight: asyncio.Future[Any] | None = None

    async def request(self, after: str, count: int) -> None:
        if self.cluster:
            self.inflight = asyncio.ensure_future(
                self.redis.xrange(self.key, f"({after}", "+", count=count)
            )
            return
        with translate_errors():
            if self.conn is None:
                self.conn = await self.pool.get_connection()
            self.pending = True
            await self.conn.send_command("XRANGE", self.key, f"({after}", "+", "COUNT", count)

    async def reply(self) -> list[RawEntry]:
        if self.inflight is not None:
            inflight, self.inflight = self.inflight, None
            with translate_errors():
                return list(await inflight or [])
        with translate_errors():
            page: Any = await self.conn.read_response(disable_decoding=True)
        self.pending = False
        return list(page or [])

    async def close(self) -> None:
        inflight, self.inflight = self.inflight, None
        if inflight is not None:
            inflight.cancel()
            await asyncio.gather(inflight, return_exceptions=True)
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            if self.pending:  # its reply would be read by the next command: drop the socket
                await conn.disconnect()
        finally:
            await self.pool.release(conn)


async def stream_page(
    redis: aioredis.Redis, namespace: str, partition: int, after: str, count: int
) -> list[RawEntry]:
    """Up to ``count`` stream entries with ids greater than ``after`` (raw, see above)."""
    reader = _Reader(redis, log_key(namespace, partition))
    try:
        await reader.request(after, count)
        return await reader.reply()
    finally:
        await reader.close()


def _archived(root: Path, namespace: str, partition: int, after: str) -> Iterator[list[RawEntry]]:
    after_sid = ids.parse(after)
    for seg in list_segments(root, namespace, partition):
        if ids.parse(seg.last) > after_sid:
            yield from segment_pages(seg.path)


async def history(
    redis: aioredis.Redis,
    namespace: str,
    partition: int,
    archive_root: Path | None,
    *,
    after: str = ids.ZERO,
    until: str | None = None,
    page_size: int = PAGE,
) -> AsyncGenerator[list[RawEntry], None]:
    """Pages of the whole log of a partition after ``after`` (archive, then stream), up to
    ``until`` inclusive when given. Pages may overlap where archive and stream both hold an
    entry, and the last page may reach past ``until``; the fold skips what it already applied
    and stops at ``until``. Close the iterator (``contextlib.aclosing``) when leaving early."""
    last = after
    stop = ids.parse(until) if until is not None else None
    if archive_root is not None:
        await check_coverage(redis, namespace, partition, archive_root)
        for page in _archived(archive_root, namespace, partition, after):
            yield page
            last = _id(page[-1][0])
            if stop is not None and ids.parse(last) >= stop:
                return
    else:
        await check_coverage(redis, namespace, partition, None)
    reader = _Reader(redis, log_key(namespace, partition))
    try:
        await reader.request(last, page_size)
        while True:
            page = await reader.reply()
            if not page:
                return
            last = _id(page[-1][0])
            done = len(page) < page_size or (stop is not None and ids.parse(last) >= stop)
            if not done:
                await reader.request(last, page_size)  # in flight while the caller folds
            yield page
            if done:
                return
    finally:
        await reader.close()


def _id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
