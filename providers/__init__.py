"""The anti-corruption layer: one interface over every external AI provider.

Nothing here imports ``engine``, ``projections`` or ``gateway``; the engine calls in through the
types of ``providers.types`` and classifies failures through ``providers.errors``.
``build_processor(redis, settings, sandbox_url=None)`` assembles the TaskProcessor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from providers.factory import build_processor

__all__ = ["build_processor"]


def __getattr__(name: str) -> Any:
    # lazy: importing providers.types must not pull in httpx, redis and purgatory
    if name == "build_processor":
        from providers.factory import build_processor  # noqa: PLC0415

        return build_processor
    raise AttributeError(name)
