"""The WebSocket protocol, sans I/O: parse client frames into commands, build server frames.

client → ``subscribe`` / ``unsubscribe`` (exactly one of ``task_id``, ``tenant``, ``stats``;
optional ``since``), ``submit`` (``task``), ``auth`` (``token``), ``ping``. Any request may
carry ``ref`` (string or integer), echoed on its answer.
server → ``event``, ``accepted``, ``subscribed``, ``unsubscribed``, ``authenticated``,
``stats``, ``pong``, ``error``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.errors import ProtocolError

StreamId = tuple[int, int]
Ref = str | int | None
TargetKind = Literal["task", "tenant", "stats"]
CHART_WINDOWS = ("15m", "1h", "24h")  # projections.series.WINDOWS, the dashboard's switch

_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_MAX_U64 = 2**64 - 1
_ALLOWED = {
    "subscribe": {"op", "ref", "task_id", "tenant", "stats", "since"},
    "unsubscribe": {"op", "ref", "task_id", "tenant", "stats"},
    "submit": {"op", "ref", "task"},
    "auth": {"op", "ref", "token"},
    "ping": {"op", "ref"},
}


def parse_id(text: str) -> StreamId | None:
    """``"<ms>-<seq>"`` as a comparable tuple, or ``None`` if it is not a stream id."""
    m = _ID.match(text)
    if not m:
        return None
    ms, seq = int(m[1]), int(m[2])
    if ms > _MAX_U64 or seq > _MAX_U64:
        return None
    return ms, seq


def format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


@dataclass(frozen=True, slots=True)
class Target:
    kind: TargetKind
    value: str  # task id, tenant ("*" = all), or "" for stats


@dataclass(frozen=True, slots=True)
class Subscribe:
    target: Target
    since: str | list[str] | None
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    target: Target
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Submit:
    task: dict[str, Any]
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Auth:
    token: str
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Ping:
    ref: Ref = None


Command = Subscribe | Unsubscribe | Submit | Auth | Ping


def _ref(msg: dict[str, Any]) -> Ref:
    ref = msg.get("ref")
    if ref is None or (isinstance(ref, int) and not isinstance(ref, bool)):
        return ref
    if isinstance(ref, str) and len(ref) <= 64:
        return ref
    raise ProtocolError("bad_message", "ref must be an integer or a string of ≤ 64 characters")


def _target(msg: dict[str, Any]) -> Target:
    given = [k for k in ("task_id", "tenant", "stats") if k in msg]
    if len(given) != 1:
        raise ProtocolError("bad_message", "name exactly one of task_id, tenant or stats")
    key = given[0]
    value = msg[key]
    if key == "stats":  # true, or the charts' window ("15m", "1h", "24h"; true: 15m)
        if value is not True and value not in CHART_WINDOWS:
            raise ProtocolError("bad_message", f"stats must be true or one of {CHART_WINDOWS}")
        return Target("stats", "" if value is True else value)
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise ProtocolError("bad_message", f"{key} must be a non-empty string (≤ 64 chars)")
    return Target("task" if key == "task_id" else "tenant", value)


def _since(msg: dict[str, Any]) -> str | list[str] | None:
    since = msg.get("since")
    if since is None:
        return None
    if isinstance(since, str):
        items = [since]
    elif isinstance(since, list) and since and all(isinstance(s, str) for s in since):
        items = since
    else:
        raise ProtocolError("bad_since", "since must be an event id or a list of event ids")
    for s in items:
        if parse_id(s) is None:
            raise ProtocolError("bad_since", f"since {s[:40]!r} is not an event id (<ms>-<seq>)")
    return since


def parse(frame: str | bytes, max_bytes: int) -> Command:
    """The command in one client frame, or ``ProtocolError`` saying what is wrong with it."""
    if len(frame) > max_bytes:
        raise ProtocolError("too_large", f"message of {len(frame)} bytes; the limit is {max_bytes}")
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError("bad_json", f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", "a message is a JSON object")
    ref = _ref(msg)
    op = msg.get("op")
    if not isinstance(op, str) or op not in _ALLOWED:
        shown = op if isinstance(op, str) else type(op).__name__
        raise ProtocolError(
            "unknown_op", f"unknown op {str(shown)[:40]!r} (known: {', '.join(_ALLOWED)})", ref=ref
        )
    extra = set(msg) - _ALLOWED[op]
    if extra:
        raise ProtocolError("bad_message", f"unknown field(s) for {op}: {sorted(extra)}", ref=ref)
    try:
        if op == "subscribe":
            return Subscribe(_target(msg), _since(msg), ref)
        if op == "unsubscribe":
            return Unsubscribe(_target(msg), ref)
        if op == "submit":
            task = msg.get("task")
            if not isinstance(task, dict):
                raise ProtocolError("bad_message", "submit needs a task object")
            return Submit(task, ref)
        if op == "auth":
            token = msg.get("token")
            if not isinstance(token, str) or not token:
                raise ProtocolError("bad_message", "auth needs a token string")
            return Auth(token, ref)
        return Ping(ref)
    except ProtocolError as exc:
        exc.extra.setdefault("ref", ref)
        raise


# --- server frames -------------------------------------------------------------------------


def dump(msg: dict[str, Any]) -> str:
    """A server frame; ``None`` values are left out."""
    return orjson.dumps({k: v for k, v in msg.items() if v is not None}).decode()


def error(code: str, message: str, **extra: Any) -> str:
    return dump({"op": "error", "code": code, "message": message, **extra})


def accepted(task_id: str, ref: Ref = None) -> str:
    return dump({"op": "accepted", "task_id": task_id, "ref": ref})


def target_fields(target: Target) -> dict[str, Any]:
    if target.kind == "stats":
        return {"stats": True}
    return {"task_id" if target.kind == "task" else "tenant": target.value}


def subscribed(target: Target, ref: Ref, **extra: Any) -> str:
    return dump({"op": "subscribed", **target_fields(target), "ref": ref, **extra})


def cursors(tenant: str, ids: list[str]) -> str:
    """Where a tenant subscription stands in every partition (index = partition): every event
    of the tenant up to these ids was sent before this frame."""
    return dump({"op": "cursors", "tenant": tenant, "cursors": ids})


def unsubscribed(target: Target, ref: Ref) -> str:
    return dump({"op": "unsubscribed", **target_fields(target), "ref": ref})


def pong(ref: Ref) -> str:
    return dump({"op": "pong", "ref": ref})


def authenticated(tenant: str, ref: Ref) -> str:
    return dump({"op": "authenticated", "tenant": tenant, "ref": ref})


def event_frame(envelope_json: bytes, partition: int) -> str:
    """``{"op":"event","partition":p,"event":<envelope>}`` from an already-encoded envelope."""
    return f'{{"op":"event","partition":{partition},"event":{envelope_json.decode()}}}'
