"""`aiis archive`: archive then trim, and replay from archive + stream."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from engine.settings import Settings
from projections import archive, ids
from projections.archive import archive_log, list_segments, read_segment, write_segment
from projections.errors import ArchiveError
from projections.registry import PROJECTIONS
from projections.replay import replay, verify
from projections.runner import PartitionRunner
from projections.storage import ShardStore

from .conftest import Log

ALL = list(PROJECTIONS.values())
NAMES = list(PROJECTIONS)


async def _catch_up(store: ShardStore) -> None:
    for p in range(2):
        runner = PartitionRunner(store, p, ALL, batch=1000)
        while await runner.step():
            pass


async def _archive(store: ShardStore, root: Path, segment_events: int = 7) -> None:
    await archive_log(
        store.redis, store.namespace, 2, root, NAMES, segment_events=segment_events, min_age_ms=0
    )


async def test_rebuild_from_zero_after_archive_trimmed_the_stream(
    store: ShardStore, log: Log, tmp_path: Path
) -> None:
    """After `aiis archive` moved the log into segments and trimmed the stream, a replay from
    zero (archive, then stream) builds the same views; events added later are included."""
    for i in range(10):
        await log.task(f"a{i}", cost=0.1)
    await _catch_up(store)
    await _archive(store, tmp_path)
    assert await store.redis.xlen(log.key) == 0
    assert sum(s.count for s in list_segments(tmp_path, store.namespace, 0)) == 30
    for i in range(3):
        await log.task(f"b{i}", cost=None)
    await _catch_up(store)
    live = {p.name: (await store.snapshot(0, p.name))[0] for p in ALL}
    assert await verify(store, 2, ALL, tmp_path) == []
    await store.redis.delete(*[store.keys(0, p).view for p in ALL])
    assert await replay(store, 2, ALL, tmp_path) == 39
    assert {p.name: (await store.snapshot(0, p.name))[0] for p in ALL} == live


async def test_archive_stops_at_the_lowest_checkpoint(
    store: ShardStore, log: Log, tmp_path: Path
) -> None:
    """Entries a projection has not applied yet stay in the stream."""
    for i in range(5):
        await log.task(f"t{i}")
    await PartitionRunner(store, 0, ALL, batch=1000).step()
    await PartitionRunner(store, 0, [PROJECTIONS["cost"]], batch=4).step()
    behind = [p for p in ALL if p.name != "cost"]
    for i in range(5, 8):
        await log.task(f"t{i}")
    await PartitionRunner(store, 0, behind, batch=1000).step()
    reports = await archive_log(
        store.redis, store.namespace, 2, tmp_path, NAMES, segment_events=100, min_age_ms=0
    )
    assert reports[0].archived == 15 and reports[0].held_by == "cost"
    assert await store.redis.xlen(log.key) == 9


async def test_crash_between_rename_and_trim_loses_and_duplicates_nothing(
    store: ShardStore, log: Log, tmp_path: Path
) -> None:
    """A segment renamed into place before a crash (stream not trimmed, id not recorded) and a
    stray temp file: the next archive run trims what the segment holds, continues after it, and
    the archive holds each entry exactly once."""
    for i in range(6):
        await log.task(f"t{i}")
    await _catch_up(store)
    page = await ids.xrange(store.redis, log.key, "-", count=5)
    folder = tmp_path / store.namespace / "p0"
    write_segment(
        folder, [(k.decode(), {a.decode(): b.decode() for a, b in f.items()}) for k, f in page]
    )
    (folder / ".tmp-dead").write_bytes(b"half a segment")
    await _archive(store, tmp_path)
    archived = [
        eid for s in list_segments(tmp_path, store.namespace, 0) for eid, _ in read_segment(s.path)
    ]
    logged = [k.decode() for k, _ in page] + archived[5:]
    assert archived == logged and len(archived) == len(set(archived)) == 18
    assert await store.redis.xlen(log.key) == 0
    assert await verify(store, 2, ALL, tmp_path) == []
    await _archive(store, tmp_path)  # idempotent
    assert sum(s.count for s in list_segments(tmp_path, store.namespace, 0)) == 18


async def test_replay_refuses_an_archive_that_does_not_cover_the_trim(
    store: ShardStore, log: Log, tmp_path: Path, settings: Settings
) -> None:
    """If the log was trimmed but the archive given is not the one written, replay says so
    instead of building partial views."""
    await log.task("t0")
    await _catch_up(store)
    await _archive(store, tmp_path / "real")
    with pytest.raises(ArchiveError, match="trimmed up to"):
        await replay(store, 2, ALL, tmp_path / "elsewhere")


def _segment_entries(n: int) -> list[tuple[str, dict[str, str]]]:
    return [
        (f"{i + 1}-0", {"type": "TaskProgress", "task": f"t{i}", "data": "z" * (i % 97)})
        for i in range(n)
    ]


def test_segment_pages_hold_every_line_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a segment in decompressed pages (pages far smaller than the segment, and a
    second gzip member appended) gives every entry once, in order, as written."""
    monkeypatch.setattr(archive, "PAGE_BYTES", 1000)
    monkeypatch.setattr(archive, "READ_CHUNK", 300)
    first, second = _segment_entries(700), _segment_entries(30)
    seg = write_segment(tmp_path / "a", first)
    with gzip.open(seg.path, "ab") as f:  # a second member, as `cat a.gz b.gz` makes
        f.writelines(orjson.dumps([e, fields]) + b"\n" for e, fields in second)
    pages = list(archive.segment_pages(seg.path))
    assert len(pages) > 10
    want = [[e, fields] for e, fields in first + second]
    assert [entry for page in pages for entry in page] == want
    assert [[e, fields] for e, fields in read_segment(seg.path)] == want


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_segment_is_an_archive_error(tmp_path: Path, damage: str) -> None:
    """A segment cut short or with a corrupted byte is refused (ArchiveError), not half read."""
    seg = write_segment(tmp_path / "a", _segment_entries(2000))
    raw = bytearray(seg.path.read_bytes())
    if damage == "truncate":
        del raw[len(raw) // 2 :]
    else:
        raw[len(raw) // 2] ^= 0xFF
    seg.path.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match="cannot read archive segment"):
        for _ in archive.segment_pages(seg.path):
            pass
