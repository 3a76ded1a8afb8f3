"""Applying events to shards: the pure part of the runner and of replay, shared by both.

``Position`` tracks, for one projection in one partition, the last event applied in memory and
the checkpoint Redis holds; an event at or before the position is skipped, which is what makes
re-delivery after a crash harmless.
"""

from __future__ import annotations

import bisect
import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from engine.core import tolerant
from engine.errors import EventDecodeError
from projections import decode, ids
from projections.errors import Unapplicable
from projections.view import Envelope, Projection, Shard

# a log entry: ``[id, [k, v, …]]`` as Redis sends it (``source`` reads without redis-py's reply
# dicts), ``(id, {k: v})`` as redis-py returns it, or ``(id, {k: v})`` of str from the archive
RawEntry = Sequence[Any]


@dataclass(slots=True)
class Position:
    """One projection's shard in one partition, and how far it has been applied."""

    projection: Projection
    shard: Shard
    applied: str = ids.ZERO  # last event folded into ``shard`` (in memory)
    saved: str = ids.ZERO  # checkpoint the stored shard is at
    gen: str = ""  # build generation of the stored shard (changes on replay)
    pending: int = 0  # events applied since ``saved``
    last_ts: int = 0

    @property
    def dirty(self) -> bool:
        return self.applied != self.saved


_APPLY_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _sid(entry: RawEntry) -> ids.StreamId:
    return ids.parse(_text(entry[0]))


def _first_after(entries: Sequence[RawEntry], sid: ids.StreamId, lo: int, hi: int) -> int:
    """The index of the first of ``entries[lo:hi]`` (in log order) with an id above ``sid``."""
    if lo >= hi or _sid(entries[lo]) > sid:
        return lo
    if _sid(entries[hi - 1]) <= sid:
        return hi
    return bisect.bisect_right(entries, sid, lo, hi, key=_sid)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Cyclic garbage collection off for the block, then as it was.

    A fold makes only acyclic garbage, which reference counting frees, yet every full
    collection walks every record of the views (tens of ms with 100,000 tasks, cache misses):
    with it on, a replay spends ≈ 30 % of its time there. Cycles made meanwhile by anything
    else in the process are collected once the block ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def apply_batch(
    partition: int,
    positions: Sequence[Position],
    entries: Sequence[RawEntry],
    until: str | None = None,
    reader: str = "projections",
) -> int:
    """Fold ``entries`` (in log order) into every position that has not seen them yet.

    Returns how many entries were new to at least one position. Stops after ``until`` when
    given. Tolerant (DESIGN.md invariant 8): an entry that cannot be decoded, or of a type the
    code does not know, is skipped by every position; an event a view cannot apply (its data
    has not the shape its type promises) is skipped by that view, keeping whatever the view's
    fold did before it failed. Either way it is counted as skipped by ``reader``
    (``engine.core.tolerant``) and the positions move past it, so the runner never stops on one —
    and since the rule depends only on the entry, a replay skips exactly what the runner
    skipped (``aiis replay --verify`` holds).
    """
    k = len(positions)
    sids = [ids.parse(p.applied) for p in positions]
    if not k or not entries:
        return 0
    lo = _first_after(entries, min(sids), 0, len(entries))
    hi = (
        len(entries) if until is None else _first_after(entries, ids.parse(until), lo, len(entries))
    )
    mid = _first_after(entries, max(sids), lo, hi)  # from here on, new to every position
    evolves = [p.projection.evolve for p in positions]
    shards = [p.shard for p in positions]
    applied = [p.applied for p in positions]
    counts = [0] * k
    last_ts = [p.last_ts for p in positions]
    fast_last: str | None = None  # the newest entry every position moved past (fast part)
    fast_ts: int | None = None
    fast_done = 0  # events of the fast part every position applied
    with paused_gc():
        try:
            for j in range(lo, mid):  # re-delivered to some positions: only where not yet
                raw_id, fields = entries[j]
                eid = _text(raw_id)
                sid = ids.parse(eid)
                try:
                    event: Envelope | None = decode.envelope(eid, fields)
                except EventDecodeError as exc:
                    tolerant.skipped(reader, eid, exc)
                    event = None
                for i in range(k):
                    if sid > sids[i]:
                        if event is not None:
                            _evolve(shards, evolves, i, event, reader, positions[i])
                            last_ts[i] = event["ts"]
                            counts[i] += 1
                        sids[i], applied[i] = sid, eid
            rng = range(k)
            for raw_id, fields in entries[mid:hi]:  # the usual case: new to every position
                eid = raw_id.decode() if type(raw_id) is bytes else raw_id
                try:
                    event = decode.envelope(eid, fields)
                except EventDecodeError as exc:
                    tolerant.skipped(reader, eid, exc)
                    fast_last = eid
                    continue
                for i in rng:
                    try:
                        shards[i] = evolves[i](shards[i], event)
                    except _APPLY_ERRORS as exc:
                        tolerant.skipped(
                            reader,
                            eid,
                            Unapplicable(positions[i].projection.name, event["type"], exc),
                        )
                fast_last, fast_ts = eid, event["ts"]
                fast_done += 1
        finally:
            for x, pos in enumerate(positions):
                pos.shard = shards[x]
                pos.pending += counts[x] + fast_done
                if fast_last is not None:
                    applied[x] = fast_last
                    if fast_ts is not None:
                        last_ts[x] = fast_ts
                pos.applied, pos.last_ts = applied[x], last_ts[x]
    return hi - lo


def _evolve(
    shards: list[Any], evolves: list[Any], i: int, event: Envelope, reader: str, pos: Position
) -> None:
    try:
        shards[i] = evolves[i](shards[i], event)
    except _APPLY_ERRORS as exc:
        tolerant.skipped(reader, event["id"], Unapplicable(pos.projection.name, event["type"], exc))
