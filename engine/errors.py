"""Engine errors. Redis errors are translated at the store boundary; none escapes the engine.

EngineError
├── InvalidTask          a submit was rejected; ``field`` names the offending field
│   ├── PiiBlocked       the tenant's PII policy is ``block`` and the input holds personal data
│   ├── BadCallbackUrl   the callback URL is not allowed; the message says why
│   ├── ResultGone       an offloaded result expired or no longer matches its hash
│   └── TemplateError    a bad template name, size or braces
│       ├── TemplateNotFound
│       ├── MissingVariables
│       └── ExtraVariables
├── QueueFull            back-pressure: the priority's queue is at its depth limit
├── BudgetExceeded       the tenant has spent its daily budget; submits wait for the reset
├── IdempotencyConflict  the idempotency key already names a task submitted with another
│                        request (kind, input or params differ); ``task_id`` is that task
├── TaskNotFound
├── MalformedTask        a task record is missing or unreadable (the worker dead-letters it)
├── RedisUnavailable     cannot reach Redis, or it refuses for now (failover, resharding);
│                        the message says where, never a password
├── RedisCommandError    Redis refused a command (WRONGTYPE, a script error, …); a bug or
│                        foreign data under our keys, not worth retrying
├── ConfigError          bad settings or a deployment mismatch (e.g. partition count)
│   └── BudgetConfigError  a budget configuration field is invalid (names the field)
└── EventDecodeError     an event the code cannot read
    ├── UnknownEventType
    └── UnsupportedEventVersion
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.admission.pii import Category


def money(usd: float) -> str:
    """``$0.05``, ``$0.0005``: cents, or as many places as a small amount needs."""
    if usd == 0 or abs(usd) >= 0.01:
        return f"${usd:.2f}"
    return "$" + f"{usd:.8f}".rstrip("0")


class EngineError(Exception):
    """Root of every error the engine raises."""


class InvalidTask(EngineError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid task: {field}: {message}")
        self.field = field
        self.message = message


class PiiBlocked(InvalidTask):
    """The tenant's policy is ``block`` and the input holds personal data. Names the
    categories found, never the values."""

    def __init__(self, categories: Iterable[Category], field: str = "input") -> None:
        self.categories = tuple(sorted(set(categories)))
        names = ", ".join(c.value for c in self.categories)
        super().__init__(
            field, f"contains personal data ({names}); the tenant's PII policy is 'block'"
        )


class BadCallbackUrl(InvalidTask):
    """The callback URL is not allowed; the message says why."""

    def __init__(self, reason: str) -> None:
        super().__init__("callback_url", reason)


class ResultGone(InvalidTask):
    def __init__(self, key: str) -> None:
        super().__init__("result", f"the stored result {key} has expired or was removed")


class TemplateError(InvalidTask):
    def __init__(self, message: str, field: str = "params.template") -> None:
        super().__init__(field, message)


class TemplateNotFound(TemplateError):
    pass


class MissingVariables(TemplateError):
    def __init__(self, name: str, version: int, missing: list[str]) -> None:
        super().__init__(
            f"template {name!r} v{version} needs variables {missing}", "params.variables"
        )
        self.missing = missing


class ExtraVariables(TemplateError):
    def __init__(self, name: str, version: int, extra: list[str]) -> None:
        super().__init__(
            f"template {name!r} v{version} has no variables {extra}", "params.variables"
        )
        self.extra = extra


class QueueFull(EngineError):
    def __init__(self, priority: str, depth: int, limit: int) -> None:
        super().__init__(
            f"queue full: priority {priority!r} holds {depth} tasks (limit {limit}); "
            "retry later or raise AIIS_QUEUE_MAX_DEPTH"
        )
        self.priority = priority
        self.depth = depth
        self.limit = limit


class BudgetExceeded(EngineError):
    """The tenant has spent its budget for the UTC day; submits are refused until it resets."""

    def __init__(
        self,
        tenant: str,
        spent_usd: float,
        budget_usd: float,
        resets_at: str,
        held_usd: float = 0.0,
    ) -> None:
        super().__init__(
            f"budget exceeded: tenant {tenant!r} spent {money(spent_usd)} (and has "
            f"{money(held_usd)} reserved by tasks in flight) of its {money(budget_usd)} daily "
            f"budget; it resets at {resets_at}"
        )
        self.tenant = tenant
        self.spent_usd = spent_usd
        self.budget_usd = budget_usd
        self.held_usd = held_usd
        self.resets_at = resets_at


class IdempotencyConflict(EngineError):
    """The tenant's idempotency key already names a task whose request differs from this one
    (kind, input or params); nothing was written. ``task_id`` is the task the key names."""

    def __init__(self, task_id: str) -> None:
        super().__init__(
            f"idempotency key reused with a different request: it already names task {task_id}, "
            "submitted with another kind, input or params; use a new key for a new request"
        )
        self.task_id = task_id
        self.field = "idempotency_key"


class TaskNotFound(EngineError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task not found: {task_id}")
        self.task_id = task_id


class MalformedTask(EngineError):
    """A held task's record is missing or unreadable; the worker dead-letters it."""


class RedisUnavailable(EngineError):
    pass


class RedisCommandError(EngineError):
    """Redis refused a command for good; chained (``from``) to redis-py's error."""


class ConfigError(EngineError):
    pass


class BudgetConfigError(ConfigError):
    pass


class EventDecodeError(EngineError):
    def __init__(self, event_id: str, message: str) -> None:
        super().__init__(f"event {event_id}: {message}")
        self.event_id = event_id


class UnknownEventType(EventDecodeError):
    pass


class UnsupportedEventVersion(EventDecodeError):
    pass
