"""Fault selection for the sandbox: a header, a marker in the prompt, a queued injection, or a
seeded random draw — in that order of precedence.

Markers (anywhere in the prompt, a chat message or an image query):
    [[fault:NAME]]            every provider fails with NAME
    [[fault:NAME@PROVIDER]]   only PROVIDER does (e.g. [[fault:rate_limit@gemini]])
    [[cached:N]] [[reasoning:N]]   report N cached input / reasoning tokens in the usage
    [[pace:N]]                a streamed answer waits N ms (at most 5,000) between its frames
Header: ``x-sandbox-fault: NAME``.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict, deque

FAULTS = frozenset(
    {
        "rate_limit",  # 429 with the provider's retry hints
        "unavailable",  # 503 (Anthropic: 529)
        "overloaded",  # 529 on Anthropic, 503 elsewhere
        "server_error",  # 500
        "timeout",  # no response at all until the client gives up
        "reset",  # the connection (HTTP/1.1) or stream (HTTP/2) is dropped, no response
        "cut",  # the answer starts, then the connection/stream is dropped
        "stall",  # the stream starts, then goes silent
        "malformed",  # a chunk (or the body) that is not valid JSON
        "midstream_error",  # the stream starts, then carries the provider's error event
        "credits",  # insufficient credits / quota exhausted
        "spend_limit",  # Anthropic 429 enforced_spend_limit_reached (others: as credits)
        "billing",  # Anthropic 402 billing_error (others: as credits)
        "bad_key",  # the key is rejected
        "invalid",  # 400 invalid request
        "remaining0",  # success, but rate-limit headers say the budget is spent for 2 s
        "echo_key",  # success, but the reply echoes the request's API key (a leaky proxy)
    }
)
RANDOM_FAULTS = ("rate_limit", "unavailable", "server_error", "reset", "cut", "malformed")

_FAULT = re.compile(r"\[\[fault:([a-z0-9_]+)(?:@([a-z]+))?\]\]")
_NUMBER = re.compile(r"\[\[(cached|reasoning|pace):(\d+)\]\]")
MARKER = re.compile(r"\[\[[a-z]+:[^\]]*\]\]")


def marker_numbers(text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in _NUMBER.finditer(text)}


class FaultPlan:
    """Decides the fault (or None) of each request."""

    def __init__(self, fault_rate: float = 0.0, seed: int | None = None) -> None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError("fault_rate must be within [0, 1]")
        self.fault_rate = fault_rate
        self.random = random.Random(seed)
        self.queued: dict[str, deque[str]] = defaultdict(deque)
        self.injected: dict[str, int] = defaultdict(int)
        # provider -> fault -> requests answered with it (what each provider "suffered")
        self.by_provider: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def inject(self, provider: str, fault: str, times: int = 1) -> None:
        """The next ``times`` requests to ``provider`` fail with ``fault``."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}")
        self.queued[provider].extend([fault] * max(0, min(times, 100_000)))

    def clear(self, provider: str | None = None) -> None:
        if provider is None:
            self.queued.clear()
        else:
            self.queued.pop(provider, None)

    def choose(self, provider: str, header: str | None, text: str) -> str | None:
        fault = self._choose(provider, header, text)
        if fault is not None:
            self.injected[fault] += 1
            self.by_provider[provider][fault] += 1
        return fault

    def _choose(self, provider: str, header: str | None, text: str) -> str | None:
        if header:
            return header if header in FAULTS else "invalid"
        for match in _FAULT.finditer(text):
            name, target = match.group(1), match.group(2)
            if target is None or target == provider:
                return name if name in FAULTS else "invalid"
        queue = self.queued.get(provider)
        if queue:
            return queue.popleft()
        if self.fault_rate and self.random.random() < self.fault_rate:
            return self.random.choice(RANDOM_FAULTS)
        return None
