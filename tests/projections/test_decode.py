"""Decoding log entries in the fold: the fast paths equal ``engine.core.mapper.envelope`` for every
shape an entry arrives in, and whatever the fast paths cannot read is handled — or rejected,
naming the right event — exactly as the mapper does."""

from __future__ import annotations

import gc
from typing import Any

import orjson
import pytest
from hypothesis import given, settings

from engine.core import mapper, tolerant
from engine.core.mapper import entry_fields
from engine.errors import EventDecodeError
from projections.decode import envelope
from projections.fold import Position, apply_batch
from projections.registry import PROJECTIONS
from projections.view import Projection, ViewConfig

from .conftest import requested, succeeded
from .events import entries, raw_entries
from .strategies import Event, event_logs

ALL = list(PROJECTIONS.values())


def _forms(fields: dict[str, str | bytes]) -> list[Any]:
    """One entry's fields as Redis sends them (flat list of bytes), as redis-py's dict of bytes,
    and as the archive stores them (dict of str)."""
    b = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}
    s = {k: v.decode() if isinstance(v, bytes) else v for k, v in fields.items()}
    return [[x for kv in b.items() for x in kv], b, s]


def _outcome(eid: str, fields: Any) -> Any:
    try:
        return envelope(eid, fields)
    except EventDecodeError as exc:
        return (type(exc), exc.event_id, str(exc))


def _expected(eid: str, fields: Any) -> Any:
    try:
        return mapper.envelope(eid, fields if not isinstance(fields, list) else _pairs(fields))
    except EventDecodeError as exc:
        return (type(exc), exc.event_id, str(exc))


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


@settings(max_examples=60, deadline=None)
@given(log=event_logs(max_tasks=4))
def test_every_form_decodes_like_the_mapper(log: list[Event]) -> None:
    """For valid events of every type, each entry form decodes to the mapper's envelope."""
    for i, (etype, task, data, ts) in enumerate(log):
        for form in _forms(entry_fields(etype, task, "acme", ts, data)):
            assert envelope(f"{i}-1", form) == _expected(f"{i}-1", form)


GOOD = {
    "type": "TaskStarted",
    "task": "t1",
    "tenant": "acme",
    "ts": "1700000000000",
    "v": "1",
    "data": '{"attempt": 1, "worker": "w"}',
}


@pytest.mark.parametrize(
    "fields",
    [
        {**GOOD, "type": "TaskExploded"},  # unknown type
        {**GOOD, "v": "2"},  # newer than the code
        {**GOOD, "v": "x"},  # malformed version
        {**GOOD, "ts": "soon"},  # malformed time
        {**GOOD, "data": "{not json"},  # malformed data
        {k: v for k, v in GOOD.items() if k != "v"},  # no version: v1
        {k: v for k, v in GOOD.items() if k != "tenant"},  # missing field
        dict(reversed(GOOD.items())),  # other field order
        {**GOOD, "extra": "1"},  # an extra field
    ],
)
def test_odd_entries_are_decoded_or_rejected_like_the_mapper(fields: dict[str, str]) -> None:
    """Entries off the common path give the mapper's envelope or the mapper's error."""
    for form in _forms(dict(fields)):
        assert _outcome("5-1", form) == _expected("5-1", form)


def test_an_old_version_is_upcast_by_the_mapper(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the code moves a type to v2, a v1 entry goes through the mapper's upcaster (the
    fast path never decodes a version other than the current one)."""
    monkeypatch.setitem(mapper.CURRENT_VERSION, "TaskStarted", 2)
    monkeypatch.setitem(
        mapper.UPCASTERS, ("TaskStarted", 1), lambda d: {**d, "worker": d["worker"].upper()}
    )
    for form in _forms(dict(GOOD)):
        env = envelope("5-1", form)
        assert env["v"] == 2 and env["data"]["worker"] == "W"


def test_an_undecodable_entry_is_skipped_and_counted() -> None:
    """A bad entry after good ones is skipped (counted as malformed) and the position moves
    past it; the events around it are applied."""
    good = raw_entries([("TaskRequested", "a", requested(), 1_700_000_000_000)])
    later = raw_entries([("TaskRequested", "b", requested(), 1_700_000_000_100)])
    later[0][0] = b"3-0"
    flat = [x for kv in _forms(dict(GOOD))[1].items() for x in kv]
    flat[5] = b"\xff\xfe"  # tenant: not UTF-8
    bad = [b"2-0", flat]
    pos = Position(PROJECTIONS["task_state"], PROJECTIONS["task_state"].new(ViewConfig()))
    before = tolerant.count("projections", "malformed")
    apply_batch(0, [pos], [*good, bad, *later])
    assert tolerant.count("projections", "malformed") == before + 1
    assert pos.applied == "3-0" and set(pos.shard.entries) == {"a", "b"}
    pos2 = Position(PROJECTIONS["task_state"], PROJECTIONS["task_state"].new(ViewConfig()))
    apply_batch(0, [pos2], [*good, bad])  # the bad one last: the position still moves past it
    assert pos2.applied == "2-0"


def test_raw_and_dict_entries_fold_to_the_same_views() -> None:
    """The same log as Redis sends it and as the archive stores it gives equal views."""
    log = [
        ("TaskRequested", "a", requested(), 1_700_000_000_000),
        ("TaskStarted", "a", {"attempt": 1, "worker": "w"}, 1_700_000_000_100),
        ("TaskSucceeded", "a", succeeded(), 1_700_000_000_200),
    ]
    by_raw = [Position(p, p.new(ViewConfig())) for p in ALL]
    by_dict = [Position(p, p.new(ViewConfig())) for p in ALL]
    apply_batch(0, by_raw, raw_entries(log))
    apply_batch(0, by_dict, entries(log))
    for a, b in zip(by_raw, by_dict, strict=True):
        assert orjson.dumps(a.shard.entries) == orjson.dumps(b.shard.entries)
        assert a.applied == b.applied == "3-0"


@pytest.mark.parametrize("enabled", [True, False])
def test_a_batch_leaves_the_garbage_collector_as_it_found_it(enabled: bool) -> None:
    """The fold pauses cyclic GC for a batch and restores the caller's setting, also when an
    exception escapes it (a bug in a view, not a bad entry: those are skipped)."""
    log = [("TaskRequested", "a", requested(), 1_700_000_000_000)]

    def boom(view: Any, event: Any) -> Any:
        raise RuntimeError("a bug in the view")

    exploding = Projection("boom", "raises", PROJECTIONS["task_state"].load, boom)
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        apply_batch(0, [Position(p, p.new(ViewConfig())) for p in ALL], raw_entries(log))
        assert gc.isenabled() is enabled
        with pytest.raises(RuntimeError):
            apply_batch(0, [Position(exploding, exploding.new(ViewConfig()))], raw_entries(log))
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()
