"""The retry table of DESIGN.md §1 as pure functions (no clock, no randomness of its own).

| error                | retry | backoff     |
| RateLimited          | yes   | exponential |
| NetworkError         | yes   | exponential |
| Overloaded           | yes   | exponential |
| InternalError        | yes   | exponential |  (an unexpected exception in the worker)
| KeyRejected          | yes   | exponential |  (a key rejected once, not yet confirmed bad)
| ProviderTimeout      | yes   | linear      |
| InvalidRequest, InsufficientCredits, AuthFailed, OwnFailure, anything else | no |
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Backoff(StrEnum):
    EXPONENTIAL = "exponential"
    LINEAR = "linear"


BACKOFF: dict[str, Backoff] = {
    "RateLimited": Backoff.EXPONENTIAL,
    "NetworkError": Backoff.EXPONENTIAL,
    "Overloaded": Backoff.EXPONENTIAL,
    "InternalError": Backoff.EXPONENTIAL,
    "KeyRejected": Backoff.EXPONENTIAL,
    "ProviderTimeout": Backoff.LINEAR,
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 1.0
    max_s: float = 300.0
    jitter: float = 0.2  # ± fraction of the delay
    max_attempts: int = 5


def next_delay(
    policy: RetryPolicy,
    error_class: str,
    attempt: int,
    retry_after: float | None = None,
    rand: float = 0.5,
) -> float | None:
    """Seconds to wait before the attempt after ``attempt`` (1-based), or None: do not retry.

    ``rand`` in [0, 1) spreads the delay by ± ``policy.jitter``; a provider's ``retry_after``
    is a floor, never shortened by jitter.
    """
    shape = BACKOFF.get(error_class)
    if shape is None:
        return None
    if shape is Backoff.EXPONENTIAL:
        base = policy.base_s * 2.0 ** min(attempt - 1, 62)
    else:
        base = policy.base_s * attempt
    delay = min(base, policy.max_s) * (1.0 + policy.jitter * (2.0 * rand - 1.0))
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return max(delay, 0.0)


class Verdict(StrEnum):
    RETRY = "retry"
    FAIL = "fail"  # TaskFailed: not retryable, or no time left before the deadline
    DEAD = "dead"  # TaskDeadLettered: retryable but retries exhausted


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    delay_s: float = 0.0
    reason: str = ""


def decide(
    policy: RetryPolicy,
    error_class: str,
    attempt: int,
    *,
    retry_after: float | None,
    now_ms: int,
    deadline_ms: int,
    rand: float = 0.5,
) -> Decision:
    """What to do after attempt ``attempt`` failed with ``error_class``."""
    delay = next_delay(policy, error_class, attempt, retry_after, rand)
    if delay is None:
        return Decision(Verdict.FAIL, reason="not retryable")
    if attempt >= policy.max_attempts:
        return Decision(Verdict.DEAD, reason="retries_exhausted")
    if now_ms + delay * 1000 >= deadline_ms:
        return Decision(Verdict.FAIL, reason="deadline")
    return Decision(Verdict.RETRY, delay_s=delay)
