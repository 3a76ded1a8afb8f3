"""The committed AsyncAPI document matches the event models."""

from __future__ import annotations

from pathlib import Path

from engine.core.events import EVENT_TYPES
from projections import asyncapi

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"


def test_committed_asyncapi_document_is_up_to_date() -> None:
    """docs/asyncapi.json equals `python -m projections.asyncapi` output (regenerate it when an
    event model changes)."""
    assert DOC.read_bytes() == asyncapi.render(), (
        "docs/asyncapi.json is stale: python -m projections.asyncapi > docs/asyncapi.json"
    )


def test_asyncapi_document_has_every_event_with_its_schema() -> None:
    """Each event type is an operation whose payload schema lists the model's data fields."""
    doc = asyncapi.build()
    assert set(doc["operations"]) == set(EVENT_TYPES) | {
        "IntakePlain",
        "IntakeFastStream",
        "IntakeRejected",
    }
    schemas = doc["components"]["schemas"]
    assert "cost_usd" in schemas["TaskSucceededData"]["properties"]
    assert schemas["TaskSucceeded"]["properties"]["type"]["const"] == "TaskSucceeded"
