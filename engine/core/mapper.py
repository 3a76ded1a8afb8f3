"""The one mapper between events and Redis stream entries.

A log entry has the fields ``type``, ``task``, ``tenant``, ``ts``, ``v`` and ``data`` (JSON).
The mapper owns schema versions: ``CURRENT_VERSION`` per type, and ``UPCASTERS`` that lift an
old ``data`` one version at a time before validation. An event newer than the code knows, or of
an unknown type, raises instead of being guessed at.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from pydantic import ValidationError

from engine.core.events import EVENT_TYPES, Event
from engine.errors import EventDecodeError, UnknownEventType, UnsupportedEventVersion

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

CURRENT_VERSION: dict[str, int] = {name: 1 for name in EVENT_TYPES}
# (type, version) -> function lifting data of that version to version + 1.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}

Fields = Mapping[bytes, bytes] | Mapping[str, str]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def entry_fields(
    event_type: str, task_id: str, tenant: str, ts: int, data: Mapping[str, Any]
) -> dict[str, str | bytes]:
    """Stream fields for a new event of the current schema version."""
    return {
        "type": event_type,
        "task": task_id,
        "tenant": tenant,
        "ts": str(ts),
        "v": str(CURRENT_VERSION[event_type]),
        "data": orjson.dumps(data),
    }


def encode(event: Event) -> dict[str, str | bytes]:
    return entry_fields(
        event.type, event.task_id, event.tenant, event.ts, event.data.model_dump(mode="json")
    )


def envelope(entry_id: bytes | str, fields: Fields) -> dict[str, Any]:
    """The wire envelope (plain dict, upcast to the current version) of a stream entry."""
    eid = _text(entry_id)
    fast = _current_envelope(eid, fields)
    return fast if fast is not None else _envelope(eid, fields)


def _current_envelope(eid: str, fields: Any) -> dict[str, Any] | None:
    """The common case — a well-formed event of the current version, as redis-py returns it
    (bytes) — without per-field conversions: replay and fan-out are bound by decoding.
    ``None`` for anything else, which ``_envelope`` handles (or rejects) in full."""
    try:
        return current_envelope(
            eid,
            fields[b"type"].decode(),
            int(fields.get(b"v", b"1")),
            fields[b"task"],
            fields[b"tenant"],
            fields[b"ts"],
            fields[b"data"],
        )
    except FAST_PATH_ERRORS:
        return None


FAST_PATH_ERRORS = (KeyError, ValueError, TypeError, AttributeError, orjson.JSONDecodeError)


def current_envelope(
    eid: str,
    event_type: str,
    version: int,
    task_id: bytes | str,
    tenant: bytes | str,
    ts: bytes | str,
    data: bytes | str,
) -> dict[str, Any] | None:
    """The envelope of an entry already split into its fields (bytes or str), when it is of the
    current version of its type; ``None`` otherwise (old versions are upcast by ``envelope``).
    Raises one of ``FAST_PATH_ERRORS`` on a malformed field."""
    if CURRENT_VERSION.get(event_type) != version:
        return None
    body = orjson.loads(data)
    if type(body) is not dict:
        raise TypeError("data is not an object")
    return {
        "id": eid,
        "type": event_type,
        "task_id": task_id if type(task_id) is str else task_id.decode(),  # type: ignore[union-attr]
        "tenant": tenant if type(tenant) is str else tenant.decode(),  # type: ignore[union-attr]
        "ts": int(ts),
        "v": version,
        "data": body,
    }


def _envelope(eid: str, fields: Fields) -> dict[str, Any]:
    try:
        f = {_text(k): _text(v) for k, v in fields.items()}  # bytes that are not UTF-8 raise
        event_type = f["type"]
        version = int(f.get("v", "1"))
        data = orjson.loads(f["data"])
        env = {
            "id": eid,
            "type": event_type,
            "task_id": f["task"],
            "tenant": f["tenant"],
            "ts": int(f["ts"]),
        }
    except (KeyError, ValueError, AttributeError, orjson.JSONDecodeError) as exc:
        raise EventDecodeError(eid, f"malformed entry ({exc})") from exc
    if type(data) is not dict:
        raise EventDecodeError(eid, f"malformed entry (data is not an object: {type(data)})")
    if event_type not in CURRENT_VERSION:
        raise UnknownEventType(eid, f"unknown event type {event_type!r}")
    current = CURRENT_VERSION[event_type]
    if version > current:
        raise UnsupportedEventVersion(
            eid, f"{event_type} v{version} is newer than this code (knows v{current}); upgrade"
        )
    while version < current:
        data = UPCASTERS[(event_type, version)](data)
        version += 1
    env["v"] = version
    env["data"] = data
    return env


def decode(entry_id: bytes | str, fields: Fields) -> Event:
    """A validated event model from a stream entry."""
    env = envelope(entry_id, fields)
    try:
        return EVENT_TYPES[env["type"]].model_validate(env)  # type: ignore[return-value]
    except ValidationError as exc:
        raise EventDecodeError(env["id"], f"invalid {env['type']}: {exc}") from exc
