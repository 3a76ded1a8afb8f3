"""Applying events to shards: the pure part of the runner and of replay, shared by both.

``Position`` tracks, for one projection in one partition, the last event applied in memory and
the checkpoint Redis holds; an event at or before the position is skipped, which is what makes
re-delivery after a crash harmless.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from engine import mapper
from engine.errors import EventDecodeError
from projections import ids
from projections.errors import ProjectionHalted
from projections.view import Envelope, Projection, Shard

RawEntry = tuple[bytes | str, Mapping[bytes, bytes] | Mapping[str, str]]


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


def decode(partition: int, entry_id: str, fields: mapper.Fields, names: str) -> Envelope:
    """The envelope of a log entry, or ``ProjectionHalted`` naming the entry."""
    try:
        return mapper.envelope(entry_id, fields)
    except EventDecodeError as exc:
        raise ProjectionHalted(names, partition, exc.event_id, str(exc)) from exc


_APPLY_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def apply_batch(
    partition: int,
    positions: Sequence[Position],
    entries: Iterable[RawEntry],
    until: str | None = None,
) -> int:
    """Fold ``entries`` (in log order) into every position that has not seen them yet.

    Returns how many entries were new to at least one position. Stops after ``until`` when
    given. On an event that cannot be decoded or applied, ``ProjectionHalted`` names it; the
    shards and positions may then hold part of the batch, so the caller reloads before saving.
    """
    names = ",".join(p.projection.name for p in positions)
    k = len(positions)
    sids = [ids.parse(p.applied) for p in positions]
    floor, top = min(sids, default=(0, 0)), max(sids, default=(0, 0))
    stop = ids.parse(until) if until is not None else None
    evolves = [p.projection.evolve for p in positions]
    shards = [p.shard for p in positions]
    counts = [0] * k
    lasts: list[str | None] = [None] * k
    last_ts = [p.last_ts for p in positions]
    n = 0
    i = 0
    event: Envelope = {}
    try:
        for raw_id, fields in entries:
            eid = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            sid = ids.parse(eid)
            if sid <= floor:
                continue
            if stop is not None and sid > stop:
                break
            n += 1
            event = decode(partition, eid, fields, names)
            ts = event["ts"]
            if sid > top:  # every projection is behind this event (the usual case)
                for i in range(k):
                    shards[i] = evolves[i](shards[i], event)
                    counts[i] += 1
                    lasts[i] = eid
                    last_ts[i] = ts
            else:  # re-delivered to some: apply only where not yet applied
                for i in range(k):
                    if sid > sids[i]:
                        shards[i] = evolves[i](shards[i], event)
                        sids[i] = sid
                        counts[i] += 1
                        lasts[i] = eid
                        last_ts[i] = ts
            floor = sid
    except _APPLY_ERRORS as exc:
        raise ProjectionHalted(
            positions[i].projection.name,
            partition,
            event.get("id", "?"),
            f"cannot apply {event.get('type')}: {exc!r}",
        ) from exc
    finally:
        for j, pos in enumerate(positions):
            pos.shard = shards[j]
            if lasts[j] is not None:
                pos.applied = lasts[j] or pos.applied
                pos.pending += counts[j]
                pos.last_ts = last_ts[j]
    return n
