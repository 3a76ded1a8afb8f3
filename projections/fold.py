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

from engine.errors import EventDecodeError
from projections import decode, ids
from projections.errors import ProjectionHalted
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
) -> int:
    """Fold ``entries`` (in log order) into every position that has not seen them yet.

    Returns how many entries were new to at least one position. Stops after ``until`` when
    given. On an event that cannot be decoded or applied, ``ProjectionHalted`` names it; the
    shards and positions may then hold part of the batch, so the caller reloads before saving.
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
    j, i, eid, partial = lo, 0, "", 0
    event: Envelope | None = None
    last: Envelope | None = None  # the newest event every position applied (fast part)
    with paused_gc():
        try:
            while j < mid:  # re-delivered to some positions: apply only where not yet applied
                raw_id, fields = entries[j]
                eid = _text(raw_id)
                sid = ids.parse(eid)
                event = decode.envelope(eid, fields)
                for i in range(k):
                    if sid > sids[i]:
                        shards[i] = evolves[i](shards[i], event)
                        sids[i], applied[i], last_ts[i] = sid, eid, event["ts"]
                        counts[i] += 1
                j += 1
            rng = range(k)
            for raw_id, fields in entries[mid:hi]:  # the usual case: new to every position
                eid = raw_id.decode() if type(raw_id) is bytes else raw_id
                event = decode.envelope(eid, fields)
                for i in rng:
                    shards[i] = evolves[i](shards[i], event)
                last = event
                j += 1
        except EventDecodeError as exc:
            raise ProjectionHalted(
                ",".join(p.projection.name for p in positions), partition, eid, str(exc)
            ) from exc
        except _APPLY_ERRORS as exc:
            partial = i if j >= mid else 0  # positions before ``i`` applied the failing event
            etype = event["type"] if event is not None else "?"
            raise ProjectionHalted(
                positions[i].projection.name, partition, eid, f"cannot apply {etype}: {exc!r}"
            ) from exc
        finally:
            done = max(0, j - mid)  # entries of the fast part every position applied
            for x, pos in enumerate(positions):
                pos.shard = shards[x]
                pos.pending += counts[x] + done
                if last is not None:
                    applied[x], last_ts[x] = last["id"], last["ts"]
                if x < partial and event is not None:
                    applied[x], last_ts[x] = event["id"], event["ts"]
                    pos.pending += 1
                pos.applied, pos.last_ts = applied[x], last_ts[x]
    return hi - lo
