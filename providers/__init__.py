"""The anti-corruption layer: one interface over every external AI provider.

Nothing here imports ``engine``, ``projections`` or ``gateway``; the engine calls in through the
types of ``providers.types`` and classifies failures through ``providers.errors``.
"""
