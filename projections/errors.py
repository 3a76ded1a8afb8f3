"""Projection errors, all ``EngineError``s so the CLI prints them as ``aiis: error: …``.

EngineError
└── ProjectionError
    ├── ArchiveError       the archive directory is missing, corrupt or does not cover the
    │                      trimmed part of a log
    ├── UnknownProjection  ``--projection NAME`` names no projection
    ├── BadQuery           a task search's filter or cursor is not valid (``field`` names it)
    └── Unapplicable       a view could not apply an event it decoded (the skip's log line;
                           never raised out of the fold)
"""

from __future__ import annotations

from engine.errors import EngineError


class ProjectionError(EngineError):
    """Root of the projection errors."""


class ArchiveError(ProjectionError):
    pass


class UnknownProjection(ProjectionError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown projection {name!r} (known: {', '.join(known)})")
        self.name = name


class BadQuery(ProjectionError):
    """A task search parameter that cannot be used (``field``: which)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Unapplicable(ProjectionError):
    """Why a view skipped an event it could decode (for the skip's log line)."""

    def __init__(self, projection: str, event_type: object, exc: BaseException) -> None:
        super().__init__(f"{projection} cannot apply {event_type}: {exc!r}")
