"""The task engine: event log and work streams on Redis, producer client, worker pool. Inside:
``core`` (a task's life), ``admission``, ``operations``, ``runtime`` — docs/architecture.md."""

from engine.client import Client, TaskView
from engine.core.events import TERMINAL, Status
from engine.errors import (
    EngineError,
    IdempotencyConflict,
    InvalidTask,
    QueueFull,
    RedisUnavailable,
    TaskNotFound,
)

__all__ = [
    "TERMINAL",
    "Client",
    "EngineError",
    "IdempotencyConflict",
    "InvalidTask",
    "QueueFull",
    "RedisUnavailable",
    "Status",
    "TaskNotFound",
    "TaskView",
]
