"""The price table: seeded prices, dated model names, unknown models."""

from __future__ import annotations

import pytest

from providers.pricing import PriceTable
from providers.types import Usage


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gemini-2.5-flash", 0.30 + 2.50),
        ("gemini-2.5-pro", 1.25 + 10),
        ("gpt-5", 1.25 + 10),
        ("gpt-5-mini", 0.25 + 2.0),
        ("claude-sonnet-4-5", 3 + 15),
        ("claude-haiku-4-5", 1 + 5),
    ],
)
def test_seeded_prices(model: str, expected: float) -> None:
    """1M input + 1M output tokens cost the seeded input + output price."""
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert PriceTable.load().cost(model, usage) == pytest.approx(expected)


def test_cached_tokens_at_cached_price() -> None:
    """Cached input tokens are charged at the cached price, the rest at the input price."""
    usage = Usage(input_tokens=1_000_000, cached_tokens=400_000)
    assert PriceTable.load().cost("gpt-5", usage) == pytest.approx(0.6 * 1.25 + 0.4 * 0.125)


@pytest.mark.parametrize(
    "model",
    [
        "gpt-5-mini-2025-08-07",
        "claude-sonnet-4-5-20250929",
        "models/gemini-2.5-flash",
        "gemini-2.5-flash-preview-05-20",
    ],
)
def test_dated_and_prefixed_names(model: str) -> None:
    """Provider-reported versions of a priced model find its price."""
    assert PriceTable.load().lookup(model) is not None


def test_mini_is_not_priced_as_base() -> None:
    """gpt-5-mini is its own entry, not gpt-5 with a suffix."""
    table = PriceTable.load()
    assert table.lookup("gpt-5-mini") != table.lookup("gpt-5")


def test_unknown_model_is_none() -> None:
    """An unknown model has no cost (None), not 0."""
    assert PriceTable.load().cost("llama-99", Usage(input_tokens=10)) is None
