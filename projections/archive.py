"""Log retention without losing replay: archive, then trim.

Per partition, the entries at or below the lowest checkpoint of every projection (and older than
``AIIS_PROJ_ARCHIVE_MIN_AGE_S``, so recent history stays in the stream for resuming watchers)
are written to gzip'd JSON-lines segment files ``<dir>/<ns>/p<N>/<first>_<last>_<count>.jsonl.gz``
— temp file, fsync, rename, fsync the directory — and only then is ``archived_to`` recorded and
the stream trimmed (``XTRIM MINID``) in one atomic step. Before that, the entries of tasks the
engine still retains are kept beside each task (``lua/keep.lua``), so a finished task stays
readable whole for its retention (``projections.keep``). A crash anywhere loses nothing (the
stream is trimmed only below what a renamed segment holds) and duplicates nothing (the next
run starts after the newest segment on disk, and first finishes an interrupted trim).
"""

from __future__ import annotations

import gzip
import itertools
import os
import secrets
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from engine.core import tolerant
from engine.core.keys import PartitionKeys
from engine.core.scripts import lua_source
from engine.core.store import translate_errors
from engine.errors import EventDecodeError
from projections import ids
from projections.errors import ArchiveError
from projections.keep import Keeper
from projections.keys import ShardKeys, archive_key, archive_lock_key, log_key
from projections.script_args import build_archive_record, parse_count

LOCK_MS = 300_000
READ_PAGE = 5000
READ_CHUNK = 64 * 1024  # compressed bytes per read
PAGE_BYTES = 1 << 20  # decompressed bytes per page of lines

# KEYS: archive hash, log. ARGV: archived_to, events added, segments added.
_RECORD_AND_TRIM = lua_source("archive_record", package="projections")


MIN_AGE = "the min-age"  # ``held_by`` when the age limit, not a checkpoint, stopped archiving


@dataclass(frozen=True, slots=True)
class Segment:
    path: Path
    first: str
    last: str
    count: int


@dataclass(slots=True)
class PartitionReport:
    partition: int
    archived: int = 0
    segments: int = 0
    trimmed: int = 0
    archived_to: str = ids.ZERO
    held_by: str | None = None  # what stopped archiving: a projection's checkpoint, or MIN_AGE
    kept: int = 0  # entries kept beside their (still retained) tasks


def partition_dir(root: Path, namespace: str, partition: int) -> Path:
    return root / namespace / f"p{partition}"


def list_segments(root: Path, namespace: str, partition: int) -> list[Segment]:
    """The segments of a partition in log order (``ArchiveError`` if they overlap)."""
    folder = partition_dir(root, namespace, partition)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob("*.jsonl.gz"):
        try:
            first, last, count = path.name.removesuffix(".jsonl.gz").split("_")
            found.append(Segment(path, first, last, int(count)))
        except ValueError:
            raise ArchiveError(f"unexpected file in the archive: {path}") from None
    found.sort(key=lambda s: ids.parse(s.first))
    for a, b in itertools.pairwise(found):
        if ids.parse(b.first) <= ids.parse(a.last):
            raise ArchiveError(f"overlapping archive segments: {a.path.name}, {b.path.name}")
    return found


def read_segment(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    for lines in _segment_lines(path):
        for line in lines:
            eid, fields = _entry(path, line)
            yield eid, fields


def segment_pages(path: Path) -> Iterator[list[Any]]:
    """The entries of a segment, ``[id, {field: value}]`` each, in pages of a few thousand."""
    for lines in _segment_lines(path):
        try:
            yield [orjson.loads(line) for line in lines]
        except orjson.JSONDecodeError as exc:
            raise ArchiveError(f"cannot read archive segment {path}: {exc}") from exc


def _entry(path: Path, line: bytes) -> tuple[str, dict[str, str]]:
    try:
        eid, fields = orjson.loads(line)
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise ArchiveError(f"cannot read archive segment {path}: {exc}") from exc
    return eid, fields


def _segment_lines(path: Path) -> Iterator[list[bytes]]:
    """The lines of a gzip'd segment, about ``PAGE_BYTES`` of them at a time (faster than line
    by line through ``gzip.GzipFile``, and memory stays bounded however well it compressed)."""
    tail = b""
    try:
        with open(path, "rb") as f:
            inflate = zlib.decompressobj(wbits=31)  # gzip header and trailer, CRC checked
            chunk = f.read(READ_CHUNK)
            while chunk:
                data = inflate.decompress(chunk, PAGE_BYTES)
                if inflate.eof and inflate.unused_data:  # another gzip member follows
                    chunk = inflate.unused_data
                    inflate = zlib.decompressobj(wbits=31)
                else:
                    chunk = inflate.unconsumed_tail or f.read(READ_CHUNK)
                lines = (tail + data).split(b"\n")
                tail = lines.pop()
                if lines:
                    yield lines
            tail += inflate.flush()
            if not inflate.eof:
                raise EOFError("compressed file ended before the end-of-stream marker")
    except (OSError, EOFError, zlib.error) as exc:
        raise ArchiveError(f"cannot read archive segment {path}: {exc}") from exc
    lines = tail.split(b"\n")
    if not lines[-1]:
        lines.pop()
    if lines:
        yield lines


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    """Streams entries into a temp file; ``commit`` makes it a durable, named segment."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.tmp = folder / f".tmp-{secrets.token_hex(4)}"
        self._raw = open(self.tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0)
        self.first: str | None = None
        self.last = ids.ZERO
        self.count = 0

    def write(self, entry_id: str, fields: dict[str, str]) -> None:
        self._gz.write(orjson.dumps([entry_id, fields]) + b"\n")
        if self.first is None:
            self.first = entry_id
        self.last = entry_id
        self.count += 1

    def commit(self) -> Segment:
        """fsync, rename into place, fsync the directory."""
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        final = self.folder / f"{self.first}_{self.last}_{self.count}.jsonl.gz"
        self.tmp.rename(final)
        _fsync_dir(self.folder)
        return Segment(final, self.first or ids.ZERO, self.last, self.count)

    def abort(self) -> None:
        self._gz.close()
        self._raw.close()
        self.tmp.unlink(missing_ok=True)


def write_segment(folder: Path, entries: Sequence[tuple[str, dict[str, str]]]) -> Segment:
    """Write entries durably as one segment (tests and tools)."""
    writer = SegmentWriter(folder)
    for eid, fields in entries:
        writer.write(eid, fields)
    return writer.commit()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def recorded_archived_to(redis: aioredis.Redis, namespace: str, partition: int) -> str:
    with translate_errors():
        raw = await redis.hget(archive_key(namespace, partition), "archived_to")
    return _text(raw) if raw is not None else ids.ZERO


async def check_coverage(
    redis: aioredis.Redis, namespace: str, partition: int, root: Path | None
) -> None:
    """Refuse to rebuild from a log whose trimmed part the archive at ``root`` lacks."""
    recorded = await recorded_archived_to(redis, namespace, partition)
    if recorded == ids.ZERO:
        return
    segments = list_segments(root, namespace, partition) if root is not None else []
    on_disk = segments[-1].last if segments else ids.ZERO
    if ids.parse(on_disk) < ids.parse(recorded):
        where = root if root is not None else "(no archive dir)"
        raise ArchiveError(
            f"partition {partition}: the log was trimmed up to {recorded} but the archive at "
            f"{where} holds only up to {on_disk}; point --archive-dir / AIIS_PROJ_ARCHIVE_DIR "
            "at the archive `aiis archive` wrote"
        )


async def _lowest_checkpoint(
    redis: aioredis.Redis, namespace: str, partition: int, names: Sequence[str]
) -> tuple[str, str | None]:
    low, holder = None, None
    with translate_errors():
        for name in names:
            raw = await redis.hget(ShardKeys(namespace, partition, name).meta, "ckpt")
            ckpt = _text(raw) if raw is not None else ids.ZERO
            if low is None or ids.parse(ckpt) < ids.parse(low):
                low, holder = ckpt, name
    return low or ids.ZERO, holder


async def archive_partition(
    redis: aioredis.Redis,
    namespace: str,
    partition: int,
    root: Path,
    names: Sequence[str],
    *,
    segment_events: int,
    min_age_ms: int,
    now_ms: int | None = None,
) -> PartitionReport:
    """Archive and trim one partition's log as far as every projection allows."""
    report = PartitionReport(partition)
    lock, token = archive_lock_key(namespace, partition), secrets.token_hex(8)
    with translate_errors():
        if not await redis.set(lock, token, nx=True, px=LOCK_MS):
            raise ArchiveError(f"partition {partition}: another `aiis archive` is running")
    try:
        await _archive(
            redis,
            namespace=namespace,
            partition=partition,
            root=root,
            names=names,
            segment_events=segment_events,
            min_age_ms=min_age_ms,
            now_ms=now_ms,
            report=report,
        )
    finally:
        with translate_errors():
            if _text(await redis.get(lock) or b"") == token:
                await redis.delete(lock)
    return report


async def _archive(
    redis: aioredis.Redis,
    *,
    namespace: str,
    partition: int,
    root: Path,
    names: Sequence[str],
    segment_events: int,
    min_age_ms: int,
    now_ms: int | None,
    report: PartitionReport,
) -> None:
    record = redis.register_script(_RECORD_AND_TRIM)
    archive, log = archive_key(namespace, partition), log_key(namespace, partition)
    await check_coverage(redis, namespace, partition, root)
    segments = list_segments(root, namespace, partition)
    done = segments[-1].last if segments else ids.ZERO
    with translate_errors():
        # finish a trim a crash interrupted (segment renamed, stream not yet trimmed)
        keys, argv = build_archive_record(archive, log, done, 0, 0, ids.after(done))
        report.trimmed += parse_count(await record(keys=keys, args=argv))
    low, holder = await _lowest_checkpoint(redis, namespace, partition, names)
    age_limit = (now_ms if now_ms is not None else int(time.time() * 1000)) - min_age_ms
    limit = min(ids.parse(low), (age_limit - 1, ids.MAX_SEQ))
    folder = partition_dir(root, namespace, partition)
    keeper = Keeper(redis, PartitionKeys(namespace, partition))
    while True:
        writer = SegmentWriter(folder)
        try:
            await _fill(
                redis, log, done, limit, max_events=segment_events, writer=writer, keep=keeper
            )
        except BaseException:
            writer.abort()
            raise
        if writer.count == 0:
            writer.abort()
            break
        seg = writer.commit()
        done = seg.last
        with translate_errors():
            keys, argv = build_archive_record(archive, log, done, seg.count, 1, ids.after(done))
            report.trimmed += parse_count(await record(keys=keys, args=argv))
        report.archived += seg.count
        report.segments += 1
    report.archived_to = done
    report.kept = keeper.kept
    if await ids.xrange(redis, log, f"({done}", count=1):  # something was held back
        report.held_by = holder if ids.parse(low) <= limit else MIN_AGE


async def _fill(
    redis: aioredis.Redis,
    log: str,
    after: str,
    limit: tuple[int, int],
    *,
    max_events: int,
    writer: SegmentWriter,
    keep: Keeper,
) -> None:
    """Write up to ``max_events`` entries after ``after`` and at most ``limit`` to ``writer``
    (each page kept beside its retained tasks first: the trim comes after the segment)."""
    cursor = after
    while writer.count < max_events:
        page = await ids.xrange(
            redis, log, f"({cursor}", count=min(READ_PAGE, max_events - writer.count)
        )
        if not page:
            return
        taken: list[tuple[str, dict[str, str]]] = []
        stopped = False
        for raw_id, fields in page:
            eid = _text(raw_id)
            if ids.parse(eid) > limit:
                stopped = True
                break
            try:
                text = {_text(k): _text(v) for k, v in fields.items()}
            except UnicodeDecodeError as exc:  # no reader can decode it: not worth keeping
                tolerant.skipped("archive", eid, EventDecodeError(eid, f"not UTF-8 ({exc})"))
                continue
            taken.append((eid, text))
        await keep(taken)
        for eid, entry in taken:
            writer.write(eid, entry)
        if stopped:
            return
        cursor = _text(page[-1][0])


async def archive_log(
    redis: aioredis.Redis,
    namespace: str,
    partitions: int,
    root: Path,
    names: Sequence[str],
    *,
    segment_events: int,
    min_age_ms: int,
    now_ms: int | None = None,
) -> list[PartitionReport]:
    """Archive and trim every partition (see the module docstring)."""
    return [
        await archive_partition(
            redis,
            namespace,
            p,
            root,
            names,
            segment_events=segment_events,
            min_age_ms=min_age_ms,
            now_ms=now_ms,
        )
        for p in range(partitions)
    ]
