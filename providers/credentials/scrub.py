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

    __slots__ = ("_firsts", "_longest", "_prefixes", "_secrets")

    def __init__(self, secrets: Iterable[str]) -> None:
        # longest first, so a key that contains another is masked whole
        found = {s for s in secrets if len(s) >= MIN_SECRET_CHARS}
        self._secrets = sorted(found, key=len, reverse=True)
        # every proper prefix of every secret: what a stream may have to hold back (a few
        # hundred short strings for a handful of keys)
        self._prefixes = frozenset(s[:n] for s in found for n in range(1, len(s)))
        self._firsts = frozenset(s[0] for s in found)
        self._longest = max((len(s) for s in found), default=0)

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
        start = max(0, len(text) - self._longest + 1)
        best = 0
        for first in self._firsts:  # candidates found in C; leftmost is the longest suffix
            i = text.find(first, start)
            while i != -1 and len(text) - i > best:
                if text[i:] in self._prefixes:
                    best = len(text) - i
                    break
                i = text.find(first, i + 1)
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
