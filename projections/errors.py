"""Projection errors, all ``EngineError``s so the CLI prints them as ``aiis: error: …``.

EngineError
└── ProjectionError
    ├── ProjectionHalted   an event the projections cannot apply; names the event id
    ├── ArchiveError       the archive directory is missing, corrupt or does not cover the
    │                      trimmed part of a log
    └── UnknownProjection  ``--projection NAME`` names no projection
"""

from __future__ import annotations

from engine.errors import EngineError


class ProjectionError(EngineError):
    """Root of the projection errors."""


class ProjectionHalted(ProjectionError):
    """The runner stopped before ``event_id``; everything before it is applied and checkpointed."""

    def __init__(self, projection: str, partition: int, event_id: str, reason: str) -> None:
        super().__init__(
            f"projection {projection!r} halted at event {event_id} (partition {partition}): "
            f"{reason}"
        )
        self.projection = projection
        self.partition = partition
        self.event_id = event_id
        self.reason = reason


class ArchiveError(ProjectionError):
    pass


class UnknownProjection(ProjectionError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown projection {name!r} (known: {', '.join(known)})")
        self.name = name
