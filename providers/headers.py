"""Pure parsing of the waits providers announce: ``Retry-After`` (seconds or HTTP date), Go-style
durations (OpenAI ``x-ratelimit-reset-*``: ``"1s"``, ``"6m0s"``, ``"250ms"``), protobuf durations
(Gemini ``RetryInfo.retryDelay``: ``"12s"``) and RFC 3339 instants (Anthropic
``anthropic-ratelimit-*-reset``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

MAX_WAIT_S = 24 * 3600.0  # a header asking for more is treated as this much

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def _bound(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_WAIT_S)


def parse_duration(value: str | None) -> float | None:
    """``"6m0s"`` -> 360.0; ``"250ms"`` -> 0.25; ``"1.5s"``; a bare number is seconds."""
    if not value:
        return None
    text = value.strip()
    try:
        return _bound(float(text))
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        return None
    return _bound(total)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After``: delta seconds or an HTTP date, as seconds from ``now``."""
    if not value:
        return None
    text = value.strip()
    try:
        return _bound(float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return _bound(when.timestamp() - now)


def provider_hint(headers: Mapping[str, str], now: float) -> float | None:
    """The wait a failed response asks for: ``retry-after-ms`` (OpenAI, Azure — milliseconds,
    the precise one) before ``Retry-After`` (whole seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return _bound(float(ms.strip()) / 1000.0)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"), now)


def parse_instant(value: str | None) -> float | None:
    """An RFC 3339 instant (``2025-01-01T00:00:30Z``) as unix seconds."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def openai_reset(headers: Mapping[str, str]) -> float | None:
    """Seconds until OpenAI's exhausted dimension resets (the longer one when unsure)."""
    waits: list[float] = []
    exhausted: list[float] = []
    for dim in ("requests", "tokens"):
        wait = parse_duration(headers.get(f"x-ratelimit-reset-{dim}"))
        if wait is None:
            continue
        waits.append(wait)
        if _int(headers.get(f"x-ratelimit-remaining-{dim}")) == 0:
            exhausted.append(wait)
    if exhausted:
        return max(exhausted)
    return max(waits) if waits else None


def anthropic_reset(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds until Anthropic's exhausted limit resets, from ``anthropic-ratelimit-*-reset``."""
    waits: list[float] = []
    exhausted: list[float] = []
    for dim in ("requests", "tokens", "input-tokens", "output-tokens"):
        at = parse_instant(headers.get(f"anthropic-ratelimit-{dim}-reset"))
        if at is None:
            continue
        waits.append(_bound(at - now))
        if _int(headers.get(f"anthropic-ratelimit-{dim}-remaining")) == 0:
            exhausted.append(_bound(at - now))
    if exhausted:
        return max(exhausted)
    return max(waits) if waits else None


def exhausted_until(provider: str, headers: Mapping[str, str], now: float) -> float | None:
    """On a *successful* response: the unix time until which the provider says we have no budget
    left (``remaining == 0``), else None. The limiter holds every worker off until then."""
    if provider == "openai":
        dims = [
            d
            for d in ("requests", "tokens")
            if _int(headers.get(f"x-ratelimit-remaining-{d}")) == 0
        ]
        waits = [parse_duration(headers.get(f"x-ratelimit-reset-{d}")) for d in dims]
    elif provider == "anthropic":
        dims = [
            d
            for d in ("requests", "tokens", "input-tokens", "output-tokens")
            if _int(headers.get(f"anthropic-ratelimit-{d}-remaining")) == 0
        ]
        instants = [parse_instant(headers.get(f"anthropic-ratelimit-{d}-reset")) for d in dims]
        waits = [None if at is None else at - now for at in instants]
    elif provider == "pexels":
        if _int(headers.get("x-ratelimit-remaining")) != 0:
            return None
        reset = _int(headers.get("x-ratelimit-reset"))
        waits = [None if reset is None else reset - now]
    elif provider == "unsplash":
        # Unsplash resets hourly and sends no reset time
        waits = [3600.0] if _int(headers.get("x-ratelimit-remaining")) == 0 else []
    else:
        return None
    known = [w for w in waits if w is not None]
    return now + _bound(max(known)) if known else None
