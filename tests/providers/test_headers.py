"""Pure parsing of the waits providers announce."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from providers.headers import (
    anthropic_reset,
    exhausted_until,
    openai_reset,
    parse_duration,
    parse_instant,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("250ms", 0.25),
        ("1h2m3.5s", 3723.5),
        ("12s", 12.0),
        ("0.5", 0.5),
        ("", None),
        ("soon", None),
        ("5x", None),
        ("1s2", None),
    ],
)
def test_parse_duration(text: str, seconds: float | None) -> None:
    """Go-style and protobuf durations parse to seconds; anything else is None."""
    assert parse_duration(text) == seconds


def test_retry_after_seconds_and_http_date() -> None:
    """Retry-After works both as delta seconds and as an HTTP date."""
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now) == 0.0
    assert parse_retry_after("garbage", now) is None


def test_openai_reset_prefers_exhausted_dimension() -> None:
    """OpenAI: the reset of the dimension whose remaining is 0 wins."""
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "2s",
        "x-ratelimit-remaining-tokens": "500",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert openai_reset(headers) == 2.0


def test_anthropic_reset_from_rfc3339() -> None:
    """Anthropic: RFC 3339 reset instants become seconds from now."""
    now = parse_instant("2025-01-01T00:00:00Z")
    assert now is not None
    headers = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2025-01-01T00:00:12Z",
    }
    assert anthropic_reset(headers, now) == pytest.approx(12.0)


def test_exhausted_until_only_when_remaining_is_zero() -> None:
    """A successful response tightens the limiter only when a budget is spent."""
    now = 1000.0
    assert (
        exhausted_until(
            "openai",
            {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "1s"},
            now,
        )
        is None
    )
    assert (
        exhausted_until(
            "openai",
            {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"},
            now,
        )
        == 1001.0
    )
    assert (
        exhausted_until("pexels", {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1010"}, now)
        == 1010.0
    )
