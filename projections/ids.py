"""Redis stream ids (``<ms>-<seq>``) as comparable tuples, and a typed XRANGE."""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis

from engine.core.store import translate_errors

ZERO = "0-0"
MAX_SEQ = 18446744073709551615

StreamId = tuple[int, int]


def parse(stream_id: str) -> StreamId:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def fmt(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


def after(stream_id: str) -> str:
    """The smallest id greater than ``stream_id`` (the ``MINID`` that drops it and older)."""
    ms, seq = parse(stream_id)
    return f"{ms + 1}-0" if seq == MAX_SEQ else f"{ms}-{seq + 1}"


def ms_of(stream_id: str) -> int:
    return parse(stream_id)[0]


Entry = tuple[bytes, dict[bytes, bytes]]


async def xrange(
    redis: aioredis.Redis, key: str, start: str, end: str = "+", count: int | None = None
) -> list[Entry]:
    """XRANGE with the reply typed (redis-py's stubs union in ``None``)."""
    with translate_errors():
        reply: Any = await redis.xrange(key, start, end, count=count)
    return cast(list[Entry], list(reply or []))
