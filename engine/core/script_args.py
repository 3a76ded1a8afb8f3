"""The typed door to the store's batch scripts: what each one reads from ARGV and returns.

Every script gets ``now_ms, consumer, max_deliveries, dlq_max_len`` first (``Store._run``); what
follows is built here, and the replies are parsed here, so an argument's position exists in one
place per script (a test checks the strides against the scripts' ``ARGV[7 + i * n]``):

- submit.lua: ``max_depth, n`` then n × ``SubmitItem`` (stride 12) → n × (status, value)
- commit.lua: ``n`` then n × ``CommitOp`` (stride 7) → one applied flag (0/1) per op
- fetch.lua: → ``cursor, n``, n × (priority, entry_id, task_id, attempt, record), ``dropped, dead``
- renew.lua: ``n`` then n × ``RenewHeld`` (stride 4) → the 1-based indices lost
- cancel.lua: ``task_id, tenant`` → ``CancelReply``; janitor.lua: ``cutoff_ms, limit, cap`` →
  tasks forgotten; history.lua: ``task_id, after, count`` → entries as XRANGE returns them
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, NamedTuple

from engine.core.events import StateCode


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SubmitItem(NamedTuple):
    """One task for submit.lua, in the order the script reads it."""

    task_id: str
    tenant: str
    priority: str
    idempotency_key: str  # '' when none
    record_json: str
    requested_json: str  # TaskRequested's data, by the pydantic model
    pii_mapping_json: str  # '' when none
    pii_key: str  # keys.vault_key of the task; '' when no mapping
    pii_ttl_s: str  # '' when no mapping
    callback_url: str  # '' when none
    correlation_key: str  # keys.correlation_key of an intake task's correlation id, '' when none
    correlation_ttl_s: str  # '' when no correlation key


def build_submit_args(max_depth: int, items: Sequence[SubmitItem]) -> list[Any]:
    return [max_depth, len(items), *chain.from_iterable(items)]


def parse_submit_reply(raw: Sequence[Any]) -> list[tuple[str, str]]:
    """``[(status, value), …]`` per item: ('new', id) | ('dup', id) | ('conflict', id: the
    task the idempotency key names, submitted with another request) | ('full', depth)."""
    return [(_s(raw[i]), _s(raw[i + 1])) for i in range(0, len(raw), 2)]


class CommitOp(NamedTuple):
    """One op of a worker for commit.lua: P progress, S, F, X, D, Q (see commit.lua)."""

    op: str
    task_id: str
    attempt: int
    priority: str
    entry_id: str
    data_json: bytes
    extra: Any  # D: due time (ms); X: reason; else ''


def build_commit_args(ops: Sequence[CommitOp]) -> list[Any]:
    return [len(ops), *chain.from_iterable(ops)]


def parse_commit_reply(raw: Sequence[Any]) -> list[int]:
    """Per op, 1 when it applied, 0 when it was fenced out."""
    return [int(x) for x in raw]


@dataclass(slots=True)
class Started:
    """A task a worker now holds: it must commit an outcome fenced by ``attempt``."""

    priority: str
    entry_id: str
    task_id: str
    attempt: int
    record: bytes


@dataclass(slots=True)
class FetchResult:
    started: list[Started] = field(default_factory=list)
    dropped: int = 0
    dead: int = 0
    cursor: str = "0-0"


FETCH_STRIDE = 5  # values per started task in fetch.lua's reply


def parse_fetch_reply(raw: Sequence[Any]) -> FetchResult:
    n = int(raw[1])
    started = [
        Started(_s(raw[i]), _s(raw[i + 1]), _s(raw[i + 2]), int(raw[i + 3]), raw[i + 4])
        for i in range(2, 2 + FETCH_STRIDE * n, FETCH_STRIDE)
    ]
    return FetchResult(started, int(raw[-2]), int(raw[-1]), _s(raw[0]))


class RenewHeld(NamedTuple):
    """One entry renew.lua re-claims for its consumer, in the order the script reads it."""

    task_id: str
    attempt: int
    priority: str
    entry_id: str


def build_renew_args(held: Sequence[RenewHeld]) -> list[Any]:
    return [len(held), *chain.from_iterable(held)]


def parse_renew_reply(raw: Sequence[Any]) -> list[int]:
    """The 0-based indices (into ``held``) of the entries the consumer lost."""
    return [int(x) - 1 for x in raw]


class CancelReply(NamedTuple):
    """cancel.lua's answer: ``cancelled`` (``stage``, ``event_id``), ``terminal`` (``code``, the
    state the task had already ended in) or ``missing``."""

    outcome: str
    code: StateCode | None = None
    stage: str = ""
    event_id: str = ""


def build_cancel_args(task_id: str, tenant: str) -> list[Any]:
    return [task_id, tenant]  # tenant '' = any


def parse_cancel_reply(raw: Sequence[Any]) -> CancelReply:
    words = [_s(x) for x in raw]
    if words[0] == "cancelled":
        return CancelReply("cancelled", stage=words[1], event_id=words[2])
    if words[0] == "terminal":
        return CancelReply("terminal", code=StateCode(words[1]))
    return CancelReply(words[0])


def build_janitor_args(cutoff_ms: int, limit: int, retained_cap: int) -> list[Any]:
    return [cutoff_ms, limit, retained_cap]


def parse_janitor_reply(raw: Any) -> int:
    """Tasks forgotten (== limit: call again)."""
    return int(raw)


def build_history_args(task_id: str, after: str, count: int) -> list[Any]:
    return [task_id, after, count]


def parse_history_reply(raw: Sequence[Any]) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Entries as XRANGE returns them: the task's kept ones, then the log's after them."""
    return [(eid, dict(zip(flat[::2], flat[1::2], strict=True))) for eid, flat in raw]
