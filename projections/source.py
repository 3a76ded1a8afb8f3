"""Reading a partition's event log: pages of raw entries strictly after an id, from the archive
segments first and then the stream, so a rebuild from zero works after the stream was trimmed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import redis.asyncio as aioredis

from projections import ids
from projections.archive import check_coverage, list_segments, read_segment
from projections.fold import RawEntry
from projections.keys import log_key

PAGE = 5000


async def stream_page(
    redis: aioredis.Redis, namespace: str, partition: int, after: str, count: int
) -> list[RawEntry]:
    """Up to ``count`` stream entries with ids greater than ``after``."""
    page = await ids.xrange(redis, log_key(namespace, partition), f"({after}", count=count)
    return list(page)


def _archived(root: Path, namespace: str, partition: int, after: str) -> Iterator[list[RawEntry]]:
    after_sid = ids.parse(after)
    for seg in list_segments(root, namespace, partition):
        if ids.parse(seg.last) <= after_sid:
            continue
        page: list[RawEntry] = []
        for entry in read_segment(seg.path):
            page.append(entry)
            if len(page) >= PAGE:
                yield page
                page = []
        if page:
            yield page


async def history(
    redis: aioredis.Redis,
    namespace: str,
    partition: int,
    archive_root: Path | None,
    *,
    after: str = ids.ZERO,
    until: str | None = None,
) -> AsyncIterator[list[RawEntry]]:
    """Pages of the whole log of a partition after ``after`` (archive, then stream), up to
    ``until`` inclusive when given. Pages may overlap where archive and stream both hold an
    entry; the fold skips what it already applied."""
    last = after
    if archive_root is not None:
        await check_coverage(redis, namespace, partition, archive_root)
        for page in _archived(archive_root, namespace, partition, after):
            yield page
            last = _id(page[-1][0])
            if until is not None and ids.parse(last) >= ids.parse(until):
                return
    else:
        await check_coverage(redis, namespace, partition, None)
    # read the next page while the caller folds this one (Redis works while we decode)
    nxt = asyncio.ensure_future(stream_page(redis, namespace, partition, last, PAGE))
    try:
        while True:
            page = await nxt
            if not page:
                return
            last = _id(page[-1][0])
            done = len(page) < PAGE or (until is not None and ids.parse(last) >= ids.parse(until))
            if not done:
                nxt = asyncio.ensure_future(stream_page(redis, namespace, partition, last, PAGE))
            yield page
            if done:
                return
    finally:
        nxt.cancel()


def _id(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
