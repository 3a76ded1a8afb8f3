"""The task engine: event log and work streams on Redis, producer client, worker pool."""

from engine.client import Client, TaskView
from engine.errors import EngineError, InvalidTask, QueueFull, RedisUnavailable, TaskNotFound
from engine.events import TERMINAL, Status

__all__ = [
    "TERMINAL",
    "Client",
    "EngineError",
    "InvalidTask",
    "QueueFull",
    "RedisUnavailable",
    "Status",
    "TaskNotFound",
    "TaskView",
]
