"""Projection errors, all ``EngineError``s so the CLI prints them as ``aiis: error: …``.

EngineError
└── ProjectionError
    ├── ArchiveError       the archive directory is missing, corrupt or does not cover the
    │                      trimmed part of a log
    └── UnknownProjection  ``--projection NAME`` names no projection
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
