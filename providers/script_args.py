"""The typed door to the providers' Lua scripts (``providers/lua``): for each script one
function that builds its ``(keys, args)`` from typed values and one that types its reply, so an
argument's position exists in exactly one place. Keys come from ``providers.keys``.

- breaker_acquire.lua: KEYS breaker hash, probe lock; ARGV now, open_s, probe lock ms, token →
  ``BreakerRead(state, opened_at, failures)`` (claims the probe when the open period is over).
- breaker_fail.lua: KEYS breaker hash; ARGV now, threshold → the failures counted when this
  one opened it, else 0.
- breaker_settle.lua: KEYS breaker hash, probe lock; ARGV new state, opened_at → whether the
  half-open probe was settled.
- breaker_reset.lua: KEYS breaker hash, no ARGV; breaker_release.lua: KEYS probe lock, ARGV token.
- ratelimit_acquire.lua: KEYS requests TAT, tokens TAT, blocked-until; ARGV now, the two
  buckets' (T, tau), token debt, then per call (tokens, max wait ms) → per call the wait in ms
  (negative: refused, ``-wait - 1``).
- ratelimit_block.lua: KEYS blocked-until; ARGV until ms, now ms → whether it moved later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal, NamedTuple

ScriptCall = tuple[list[str], list[Any]]
BreakerState = Literal["opened", "closed", "half-opened"]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class BreakerKeys:
    """One breaker's keys: its state hash and its half-open probe lock."""

    state: str
    probe: str

    def all(self) -> list[str]:
        return [self.state, self.probe]


_STATES: dict[str, BreakerState] = {s: s for s in ("opened", "closed", "half-opened")}


class BreakerRead(NamedTuple):
    state: BreakerState
    opened_at: float | None  # None when closed
    failures: int


def build_breaker_acquire(
    keys: BreakerKeys, now: float, open_s: float, probe_lock_ms: int, token: str
) -> ScriptCall:
    return keys.all(), [now, open_s, probe_lock_ms, token]


def parse_breaker_acquire(raw: Sequence[Any]) -> BreakerRead:
    """An unknown state reads as closed (a hash written by a newer version, say)."""
    state = _STATES.get(_s(raw[0]), "closed")
    opened = float(raw[1]) if state != "closed" else None
    return BreakerRead(state, opened, int(raw[2]))


def build_breaker_fail(keys: BreakerKeys, now: float, threshold: int) -> ScriptCall:
    return [keys.state], [now, threshold]


def parse_breaker_fail(raw: Any) -> int:
    """The failure count when this failure opened the breaker, else 0."""
    return int(raw)


def build_breaker_settle(keys: BreakerKeys, state: str, opened_at: float) -> ScriptCall:
    return keys.all(), [state, opened_at]


def parse_flag(raw: Any) -> bool:
    return bool(int(raw))


def build_breaker_reset(keys: BreakerKeys) -> ScriptCall:
    return [keys.state], []


def build_breaker_release(keys: BreakerKeys, token: str) -> ScriptCall:
    return [keys.probe], [token]


class RateCall(NamedTuple):
    """One call waiting for a slot, in the order ratelimit_acquire.lua reads it (stride 2)."""

    tokens: int
    max_wait_ms: int


def build_ratelimit_acquire(
    requests: str,
    tokens: str,
    blocked: str,
    now_ms: int,
    request_bucket: tuple[float, float],
    token_bucket: tuple[float, float],
    debt: int,
    calls: Sequence[RateCall],
) -> ScriptCall:
    """Buckets are (T, tau) in ms (GCRA emission interval and tolerance; T 0 = no limit)."""
    head: list[Any] = [now_ms, *request_bucket, *token_bucket, debt]
    return [requests, tokens, blocked], head + list(chain.from_iterable(calls))


def parse_ratelimit_acquire(raw: Sequence[Any]) -> list[int]:
    return [int(w) for w in raw]


def build_ratelimit_block(blocked: str, until_ms: int, now_ms: int) -> ScriptCall:
    return [blocked], [until_ms, now_ms]
