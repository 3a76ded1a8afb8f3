"""Engine errors. Redis errors are translated at the store boundary; none escapes the engine.

EngineError
├── InvalidTask          a submit was rejected; ``field`` names the offending field
├── QueueFull            back-pressure: the priority's queue is at its depth limit
├── TaskNotFound
├── RedisUnavailable     cannot reach Redis (message says where, never a password)
├── ConfigError          bad settings or a deployment mismatch (e.g. partition count)
└── EventDecodeError     an event the code cannot read
    ├── UnknownEventType
    └── UnsupportedEventVersion
"""

from __future__ import annotations


class EngineError(Exception):
    """Root of every error the engine raises."""


class InvalidTask(EngineError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid task: {field}: {message}")
        self.field = field
        self.message = message


class QueueFull(EngineError):
    def __init__(self, priority: str, depth: int, limit: int) -> None:
        super().__init__(
            f"queue full: priority {priority!r} holds {depth} tasks (limit {limit}); "
            "retry later or raise AIIS_QUEUE_MAX_DEPTH"
        )
        self.priority = priority
        self.depth = depth
        self.limit = limit


class TaskNotFound(EngineError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"task not found: {task_id}")
        self.task_id = task_id


class RedisUnavailable(EngineError):
    pass


class ConfigError(EngineError):
    pass


class EventDecodeError(EngineError):
    def __init__(self, event_id: str, message: str) -> None:
        super().__init__(f"event {event_id}: {message}")
        self.event_id = event_id


class UnknownEventType(EventDecodeError):
    pass


class UnsupportedEventVersion(EventDecodeError):
    pass
