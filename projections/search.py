"""Task search over the ``task_state`` view: filters, newest first, pages with an opaque cursor.

``parse_query`` turns request parameters (HTTP query or gRPC fields, as strings) into a
``Query`` or raises ``BadQuery`` naming the field; ``search`` reads each partition's shard
(HSCAN: one key per call, so it works the same on a Redis Cluster), keeps the matching records
and returns one page. Order: ``requested_ts`` descending (a record whose request was trimmed
away sorts by its last update), then task id. The cursor is the last row's (ts, task id) and a
digest of the query it belongs to, signed with a deployment secret kept in Redis: a cursor
edited by hand, or used with other filters, is refused.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import heapq
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine.core.events import Status
from engine.core.store import translate_errors
from projections.errors import BadQuery
from projections.keys import ShardKeys, search_secret_key

STATUSES = frozenset(s.value for s in Status)
KINDS = frozenset({"text", "chat", "image"})
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
SCAN_COUNT = 1000
MAX_FIELD = 128  # longest filter value taken
FIELDS = ("tenant", "status", "kind", "provider", "since", "until", "limit", "cursor")


@dataclass(frozen=True, slots=True)
class Query:
    tenant: str | None  # None: every tenant (operators only)
    status: str | None = None
    kind: str | None = None
    provider: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int = DEFAULT_LIMIT
    after: tuple[int, str] | None = None  # from the cursor: rows strictly after this one
    cursor: str | None = None  # as given, checked against the secret in ``search``

    def digest(self) -> str:
        """What a cursor is bound to: the filters, not the page size or position."""
        parts = [self.tenant, self.status, self.kind, self.provider, self.since_ms, self.until_ms]
        return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Page:
    tasks: list[dict[str, Any]]
    next_cursor: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "next_cursor": self.next_cursor}


def _time(field: str, text: str) -> int:
    """Unix milliseconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise BadQuery(field, "not unix milliseconds nor an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def parse_query(params: Mapping[str, str], tenant: str | None) -> Query:
    """A ``Query`` from string parameters; ``tenant`` is what the caller may see (None: all,
    then ``params["tenant"]`` may narrow it). Empty values are absent."""
    p = {k: v.strip() for k, v in params.items() if k in FIELDS and v.strip()}
    for key, value in p.items():
        if len(value) > (1024 if key == "cursor" else MAX_FIELD):
            raise BadQuery(key, "too long")
    status = p.get("status")
    if status is not None and status not in STATUSES:
        raise BadQuery("status", f"one of {', '.join(sorted(STATUSES))}")
    kind = p.get("kind")
    if kind is not None and kind not in KINDS:
        raise BadQuery("kind", f"one of {', '.join(sorted(KINDS))}")
    since = _time("since", p["since"]) if "since" in p else None
    until = _time("until", p["until"]) if "until" in p else None
    if since is not None and until is not None and until < since:
        raise BadQuery("until", "before since")
    limit = DEFAULT_LIMIT
    if "limit" in p:
        if not p["limit"].isdigit() or not 1 <= int(p["limit"]) <= MAX_LIMIT:
            raise BadQuery("limit", f"an integer from 1 to {MAX_LIMIT}")
        limit = int(p["limit"])
    query = Query(
        tenant=tenant if tenant is not None else p.get("tenant"),
        status=status,
        kind=kind,
        provider=p.get("provider"),
        since_ms=since,
        until_ms=until,
        limit=limit,
    )
    cursor = p.get("cursor")
    if cursor is None:
        return query
    after = _cursor_position(cursor)
    return Query(**{**_fields(query), "after": after, "cursor": cursor})


def _fields(query: Query) -> dict[str, Any]:
    return {name: getattr(query, name) for name in Query.__slots__}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BadQuery("cursor", "not a cursor of this API") from None


def _cursor_body(cursor: str) -> tuple[list[Any], bytes, bytes]:
    body, sep, mac = cursor.partition(".")
    if not sep:
        raise BadQuery("cursor", "not a cursor of this API")
    raw = _unb64(body)
    try:
        parts = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadQuery("cursor", "not a cursor of this API") from None
    if (
        not isinstance(parts, list)
        or len(parts) != 3
        or not isinstance(parts[0], int)
        or not isinstance(parts[1], str)
        or not isinstance(parts[2], str)
    ):
        raise BadQuery("cursor", "not a cursor of this API")
    return parts, raw, _unb64(mac)


def _cursor_position(cursor: str) -> tuple[int, str]:
    parts, _, _ = _cursor_body(cursor)
    return parts[0], parts[1]


async def _secret(redis: aioredis.Redis, namespace: str) -> bytes:
    key = search_secret_key(namespace)
    with translate_errors():
        await redis.set(key, secrets.token_hex(32), nx=True)
        value = await redis.get(key)
    return value if isinstance(value, bytes) else str(value).encode()


def _sign(secret: bytes, raw: bytes) -> bytes:
    return hmac.new(secret, raw, hashlib.sha256).digest()[:16]


def _matches(q: Query, rec: dict[str, Any]) -> bool:
    if q.tenant is not None and rec.get("tenant") != q.tenant:
        return False
    if q.status is not None and rec.get("status") != q.status:
        return False
    if q.kind is not None and rec.get("kind") != q.kind:
        return False
    if q.provider is not None:
        error = rec.get("error")
        failed_on = error.get("provider") if isinstance(error, dict) else None
        if q.provider not in (rec.get("provider"), failed_on):
            return False
    ts = _ts(rec)
    if q.since_ms is not None and ts < q.since_ms:
        return False
    return not (q.until_ms is not None and ts > q.until_ms)


def _ts(rec: dict[str, Any]) -> int:
    ts = rec.get("requested_ts")
    if not isinstance(ts, int):
        ts = rec.get("updated_ts")
    return ts if isinstance(ts, int) else 0


async def search(redis: aioredis.Redis, namespace: str, partitions: int, q: Query) -> Page:
    """One page of the tasks matching ``q``, newest first."""
    secret = await _secret(redis, namespace)
    if q.cursor is not None:
        parts, raw, mac = _cursor_body(q.cursor)
        if not hmac.compare_digest(mac, _sign(secret, raw)):
            raise BadQuery("cursor", "not a cursor of this API (altered or from elsewhere)")
        if parts[2] != q.digest():
            raise BadQuery("cursor", "belongs to a query with other filters")
    # the page plus one row, to know whether there is a next page
    best: list[tuple[int, str, dict[str, Any]]] = []
    want = q.limit + 1
    for partition in range(partitions):
        key = ShardKeys(namespace, partition, "task_state").view
        with translate_errors():
            async for raw_key, raw_rec in redis.hscan_iter(key, count=SCAN_COUNT):
                task_id = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
                if task_id.startswith("~"):
                    continue
                rec = orjson.loads(raw_rec)
                if not isinstance(rec, dict) or not _matches(q, rec):
                    continue
                ts = _ts(rec)
                if q.after is not None and (ts, task_id) >= q.after:
                    continue
                item = (ts, task_id, rec)
                if len(best) < want:
                    heapq.heappush(best, item)
                elif (ts, task_id) > best[0][:2]:
                    heapq.heapreplace(best, item)
    rows = sorted(best, key=lambda r: (r[0], r[1]), reverse=True)
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    tasks = [{"task_id": tid, **rec} for _, tid, rec in rows]
    cursor = None
    if more and rows:
        last_ts, last_id, _ = rows[-1]
        raw = orjson.dumps([last_ts, last_id, q.digest()])
        cursor = f"{_b64(raw)}.{_b64(_sign(secret, raw))}"
    return Page(tasks, cursor)
