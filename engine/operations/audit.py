"""Audit log: who did what, when — an append-only Redis stream ``{namespace}:audit``.

Entries name the tenant and the token *id* (never the token), the action (``Action``), its
target and outcome, and a small detail map. Before anything is written, every string passes
through PII redaction (``engine.admission.pii``, placeholders only: no mapping is kept) and a secret
scrubber: values of secret-looking fields, strings shaped like provider keys or bearer tokens,
and any secret the caller registers are replaced by ``[REDACTED]``.

Bound: ``XADD MAXLEN ~ max_len`` (default 1,000,000 entries, a few hundred MB at most; Redis
trims whole macro nodes, so the stream may briefly exceed the bound by one node, ~100
entries). Archive the stream before it is trimmed if you need longer retention.

CLI: ``register_audit(subparsers)`` adds ``aiis audit [--since …] [--limit N] [--tenant T]
[--json]`` and ``engine.runtime.commands.audit_command(args, settings)`` runs it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field

from engine.admission import redaction
from engine.core.keys import audit_key
from engine.core.store import translate_errors
from engine.errors import EngineError

DEFAULT_MAX_LEN = 1_000_000
MAX_DETAIL_ITEMS = 32
MAX_STRING = 1024
REDACTED = "[REDACTED]"

_SECRET_FIELD = re.compile(r"(?i)(secret|token|password|passwd|api[_-]?key|authorization|cookie)")
_SECRET_SHAPES = re.compile(
    r"(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{30,}|"
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abpr]-[A-Za-z0-9-]{10,})"
)


class Action(StrEnum):
    SUBMIT = "submit"
    CANCEL = "cancel"
    DLQ_RETRY = "dlq_retry"
    DLQ_PURGE = "dlq_purge"
    KEY_RELOAD = "key_reload"
    CONFIG_CHANGE = "config_change"
    REPLAY = "replay"


Scalar = str | int | float | bool | None


class AuditEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = None  # stream id, once written
    ts: int  # unix ms
    action: Action
    tenant: str
    token_id: str | None = Field(None, max_length=64)
    target: str | None = None  # a task id, a config name …
    outcome: Literal["ok", "denied", "error"] = "ok"
    detail: dict[str, Scalar] = Field(default_factory=dict)


class Scrubber:
    """Removes secrets and PII from strings bound for the audit log."""

    def __init__(self, secrets: Callable[[], Iterable[str]] | None = None) -> None:
        self._secrets = secrets

    def text(self, value: str) -> str:
        value = value[:MAX_STRING]
        if self._secrets is not None:
            for s in self._secrets():
                if s:
                    value = value.replace(s, REDACTED)
        value = _SECRET_SHAPES.sub(REDACTED, value)
        return redaction.redact(value).text

    def detail(self, detail: Mapping[str, Any]) -> dict[str, Scalar]:
        out: dict[str, Scalar] = {}
        for k, v in list(detail.items())[:MAX_DETAIL_ITEMS]:
            key = self.text(str(k))[:64]
            if _SECRET_FIELD.search(key):
                out[key] = REDACTED
            elif isinstance(v, str):
                out[key] = self.text(v)
            elif v is None or isinstance(v, bool | int | float):
                out[key] = v
            else:  # nested data is flattened to scrubbed JSON text
                out[key] = self.text(orjson.dumps(v, default=str).decode())
        return out


class AuditLog:
    """Append and read audit entries."""

    def __init__(
        self,
        redis: aioredis.Redis,
        namespace: str,
        *,
        max_len: int = DEFAULT_MAX_LEN,
        secrets: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.redis = redis
        self.key = audit_key(namespace)
        self.max_len = max_len
        self.scrub = Scrubber(secrets)

    async def record(
        self,
        action: Action | str,
        *,
        tenant: str,
        token_id: str | None = None,
        target: str | None = None,
        outcome: Literal["ok", "denied", "error"] = "ok",
        detail: Mapping[str, Any] | None = None,
        ts: int | None = None,
    ) -> AuditEntry:
        """Append one entry (scrubbed); returns it with its stream id."""
        entry = AuditEntry(
            ts=ts if ts is not None else int(time.time() * 1000),
            action=Action(action),
            tenant=self.scrub.text(tenant),
            token_id=self.scrub.text(token_id) if token_id is not None else None,
            target=self.scrub.text(target) if target is not None else None,
            outcome=outcome,
            detail=self.scrub.detail(detail or {}),
        )
        body = entry.model_dump_json(exclude={"id"})
        with translate_errors():
            eid = await self.redis.xadd(
                self.key, {"e": body}, maxlen=self.max_len, approximate=True
            )
        return entry.model_copy(update={"id": eid.decode() if isinstance(eid, bytes) else eid})

    async def read(
        self, since: str | None = None, limit: int = 100, tenant: str | None = None
    ) -> list[AuditEntry]:
        """Entries after stream id ``since`` (exclusive; from the start when None), oldest
        first, at most ``limit``; optionally only one tenant's."""
        return await self._scan(f"({since}" if since else "-", limit, tenant, newest=False)

    async def length(self) -> int:
        """Entries the (capped) stream holds."""
        with translate_errors():
            return int(await self.redis.xlen(self.key))

    async def read_latest(self, limit: int = 100, tenant: str | None = None) -> list[AuditEntry]:
        """The newest ``limit`` entries (optionally one tenant's), oldest first."""
        return list(reversed(await self._scan("+", limit, tenant, newest=True)))

    async def _scan(
        self, bound: str, limit: int, tenant: str | None, *, newest: bool
    ) -> list[AuditEntry]:
        """At most ``limit`` entries (of ``tenant``) from ``bound`` on: forward, or backward
        from the newest (``newest``), in that order."""
        out: list[AuditEntry] = []
        while len(out) < limit:
            count = max(limit, 100)
            with translate_errors():
                if newest:
                    page = await self.redis.xrevrange(self.key, bound, "-", count=count)
                else:
                    page = await self.redis.xrange(self.key, bound, "+", count=count)
            if not page:
                break
            for eid, fields in page:
                sid = _sid(eid)
                entry = _entry(sid, fields)
                if entry is not None and (tenant is None or entry.tenant == tenant):
                    out.append(entry)
                    if len(out) >= limit:
                        break
            bound = f"({sid}"
        return out


def _sid(eid: Any) -> str:
    return eid.decode() if isinstance(eid, bytes) else str(eid)


def _entry(sid: str, fields: Any) -> AuditEntry | None:
    raw = (fields or {}).get(b"e")
    if raw is None:
        return None
    return AuditEntry.model_validate({**orjson.loads(raw), "id": sid})


# --- CLI -----------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_since(text: str, now_ms: int | None = None) -> str:
    """``--since``: a stream id (``1718000000000-0``), a unix ms time, an ISO-8601 time, or a
    duration back from now (``30m``, ``2h``, ``7d``); returns an exclusive stream id bound."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    if re.fullmatch(r"\d+-\d+", text):
        return text
    if text.isdigit():
        return f"{int(text) - 1}-0" if int(text) > 0 else "0-0"
    m = _DURATION.match(text)
    if m:
        seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return f"{max(0, now_ms - seconds * 1000 - 1)}-0"
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise EngineError(
            f"--since: {text!r} is not a stream id, unix ms, ISO time or duration like 2h"
        ) from None
    return f"{max(0, int(at.timestamp() * 1000) - 1)}-0"


def register_audit(sub: Any) -> list[str]:
    """Add ``aiis audit`` to the CLI's subparsers; returns the command names added."""
    p = sub.add_parser("audit", help="show the audit log")
    p.add_argument("--since", default=None, help="stream id, unix ms, ISO time or 30m/2h/7d")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--tenant", default=None)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    return ["audit"]
