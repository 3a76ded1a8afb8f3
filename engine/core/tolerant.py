"""Tolerant readers (DESIGN.md invariant 8): what every reader of the log does with an entry it
cannot decode, or whose type it does not know — count it, log it once with its id, skip it.

Anyone who can write to Redis can append a bad entry; a reader that stops on one takes its
component down (and, if it re-reads at start, keeps it down). So a reader never raises on an
entry: it calls ``skipped(reader, entry_id, exc)`` and goes on, its cursor moving past the
entry. ``SKIPPED`` counts them per reader and reason; the gateway exports its process's counts
on ``/metrics`` as ``aiis_undecodable_events_total{reader, reason}``. At most ``MAX_LOGGED`` ids are
logged one by one per reader and process; after that one line per ``SUMMARY_EVERY`` skips.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally

from engine.errors import EventDecodeError, UnknownEventType, UnsupportedEventVersion

log = logging.getLogger("aiis.readers")

MAX_LOGGED = 100  # ids logged one by one, per reader and process
SUMMARY_EVERY = 1000  # then one summary line per this many skips
MAX_DETAIL = 300  # characters of the reason in a log line

# (reader, reason) -> entries skipped in this process. A plain tally, not a prometheus_client
# object, so the engine's processes do not import it at start; the gateway exports it on
# /metrics as the counter ``aiis_undecodable_events_total`` (``gateway.metrics``).
SKIPPED: Tally[tuple[str, str]] = Tally()
_logged: Tally[str] = Tally()
_seen: Tally[str] = Tally()


def reason_of(exc: BaseException) -> str:
    """The ``reason`` label of a skip."""
    if isinstance(exc, UnknownEventType):
        return "unknown_type"
    if isinstance(exc, UnsupportedEventVersion):
        return "newer_version"
    if isinstance(exc, EventDecodeError):
        return "malformed"
    return "unapplicable"


def skipped(reader: str, entry_id: str, exc: BaseException) -> None:
    """Count and (boundedly) log one skipped entry of ``reader``."""
    reason = reason_of(exc)
    SKIPPED[(reader, reason)] += 1
    _seen[reader] += 1
    if _logged[reader] < MAX_LOGGED:
        _logged[reader] += 1
        detail = str(exc).replace("\n", " ")[:MAX_DETAIL]
        log.warning("%s: skipping log entry %s (%s): %s", reader, entry_id, reason, detail)
    elif _seen[reader] % SUMMARY_EVERY == 0:
        log.warning(
            "%s: %d log entries skipped so far (aiis_undecodable_events_total)",
            reader,
            _seen[reader],
        )


def count(reader: str, reason: str | None = None) -> int:
    """Entries ``reader`` skipped in this process (all reasons, or one)."""
    return sum(n for (r, why), n in SKIPPED.items() if r == reader and reason in (None, why))
