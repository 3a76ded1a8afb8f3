"""Where a subscription's replay starts: ``since`` checked against what the log retains.

``since`` is the id of the last event the client has; replay starts strictly after it. Ids
are per partition. A task lives in one partition, so one id is unambiguous. A tenant spans
every partition: with ``AIIS_PARTITIONS=1`` one id is enough; with P > 1 ``since`` is a list of
P ids (index = partition, the ``partition`` field of each event frame). ``"0-0"`` means
everything the log still retains.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from engine.core.keys import partition_of
from engine.core.store import StateWord, Store, id_before, translate_errors
from engine.errors import RedisCommandError
from gateway.errors import ProtocolError
from gateway.protocol import Target, format_id, parse_id

EVERYTHING = "0-0"


def _when(sid: str) -> str:
    ms = int(sid.partition("-")[0])
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


async def log_bounds(store: Store, partition: int) -> tuple[str | None, str, str | None]:
    """(first retained id, last generated id, max deleted id — None before Redis 7)."""
    key = store.keys(partition).log
    try:
        with translate_errors():
            info: dict[str, Any] = await store.redis.xinfo_stream(key)
    except RedisCommandError:  # no such key: nothing was ever written
        return None, "0-0", None

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    first = info.get("first-entry")
    deleted = info.get("max-deleted-entry-id")
    return (
        text(first[0]) if first else None,
        text(info["last-generated-id"]),
        text(deleted) if deleted is not None else None,
    )


async def check_retained(
    store: Store, partition: int, since: str, *, task_id: str | None = None
) -> None:
    """``ProtocolError`` unless every event after ``since`` is still in the partition's log, or
    (``task_id``) the task's trimmed part was kept beside it by the archive."""
    sid = parse_id(since)
    if sid is None:
        raise ProtocolError("bad_since", f"since {since[:40]!r} is not an event id (<ms>-<seq>)")
    first, last, deleted = await log_bounds(store, partition)
    last_id = parse_id(last) or (0, 0)
    if sid > last_id:
        raise ProtocolError(
            "since_ahead",
            f"since {since} is ahead of the log (its newest event is {last}); was the log "
            'reset? subscribe without since, or with since="0-0" for everything retained',
        )
    if since == EVERYTHING or first is None:
        return
    if deleted is not None:  # Redis ≥ 7 knows exactly what was trimmed
        gap = deleted != "0-0" and sid < (parse_id(deleted) or (0, 0))
    else:
        gap = sid < (parse_id(id_before(first)) or (0, 0))
    if gap and task_id is not None:
        with translate_errors():
            gap = not await store.redis.hexists(store.keys(partition).kept, task_id)
    if gap:
        raise ProtocolError(
            "since_too_old",
            f"since {since} is older than the retained log: replay reaches back to {first} "
            f'({_when(first)}); subscribe with since="0-0" for everything retained',
            oldest=first,
        )


async def resolve(
    store: Store, target: Target, since: str | list[str] | None, word: StateWord | None
) -> dict[int, str] | None:
    """Partition -> id to replay after; ``None`` for live only."""
    partitions = store.settings.partitions
    if target.kind == "stats":
        if since is not None:
            raise ProtocolError("bad_since", "a stats subscription has no since")
        return None
    if target.kind == "task":
        partition = partition_of(target.value, partitions)
        if since is None:
            assert word is not None
            return {partition: id_before(word.requested_id)}
        if not isinstance(since, str):
            raise ProtocolError("bad_since", "a task subscription takes one event id as since")
        await check_retained(store, partition, since, task_id=target.value)
        return {partition: since}
    if since is None:
        return None
    ids = [since] if isinstance(since, str) else since
    if len(ids) != partitions:
        raise ProtocolError(
            "bad_since",
            f"this deployment has {partitions} partitions: since for a tenant is a list of "
            f"{partitions} event ids, one per partition (the event frame's 'partition' field)",
        )
    for partition, sid in enumerate(ids):
        await check_retained(store, partition, sid)
    return {p: format_id(parse_id(s) or (0, 0)) for p, s in enumerate(ids)}
