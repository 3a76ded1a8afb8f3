"""Known key values taken out of what a provider says back — result text, streamed deltas, error
messages — before it becomes an event. A reply that echoes the API key (a prompt that asks for
it, a proxy that reflects headers) must not land in the log.

``Scrubber.text`` replaces every known key in a whole string; ``Scrubber.stream`` does the same
for a sequence of deltas, holding back a tail that could be the start of a key split across two
deltas until the next delta (or ``flush``) decides it.
"""

from __future__ import annotations

from collections.abc import Iterable

MASK = "***"
MIN_SECRET_CHARS = 8  # shorter values (none of the providers' keys) would mangle ordinary text


class Scrubber:
    """Removes a fixed set of secrets from text."""

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str]) -> None:
        # longest first, so a key that contains another is masked whole
        found = {s for s in secrets if len(s) >= MIN_SECRET_CHARS}
        self._secrets = sorted(found, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def text(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def stream(self) -> DeltaScrubber:
        return DeltaScrubber(self)

    def held_back(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a secret."""
        best = 0
        for secret in self._secrets:
            # leftmost candidate first: the first that matches is this secret's longest
            i = text.find(secret[0], max(0, len(text) - len(secret) + 1))
            while i != -1 and len(text) - i > best:
                if secret.startswith(text[i:]):
                    best = len(text) - i
                    break
                i = text.find(secret[0], i + 1)
        return best


class DeltaScrubber:
    """One stream's scrubbing state: ``feed`` returns what may be emitted now."""

    __slots__ = ("_pending", "_scrubber")

    def __init__(self, scrubber: Scrubber) -> None:
        self._scrubber = scrubber
        self._pending = ""

    def feed(self, delta: str) -> str:
        text = self._scrubber.text(self._pending + delta)
        keep = self._scrubber.held_back(text)
        if keep:
            self._pending = text[-keep:]
            return text[:-keep]
        self._pending = ""
        return text

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text
