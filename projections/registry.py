"""The projections, by name, in the order they are applied and shown."""

from __future__ import annotations

from projections.errors import UnknownProjection
from projections.view import Projection
from projections.views import charts, cost, provider_health, queue_length, task_state

PROJECTIONS: dict[str, Projection] = {
    p.name: p
    for p in (
        task_state.PROJECTION,
        queue_length.PROJECTION,
        cost.PROJECTION,
        provider_health.PROJECTION,
        charts.PROJECTION,
    )
}


def select(name: str | None) -> list[Projection]:
    """Every projection, or the one named (``UnknownProjection`` otherwise)."""
    if name is None:
        return list(PROJECTIONS.values())
    if name not in PROJECTIONS:
        raise UnknownProjection(name, list(PROJECTIONS))
    return [PROJECTIONS[name]]
