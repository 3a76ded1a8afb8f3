"""A subscriber's bounded send buffer, and the events that go into it.

The hub never waits on a subscriber: it puts an ``Item`` into each matching outbox and moves
on. An outbox that would grow past its limits (items or bytes) is marked overflowed instead,
and its owner closes the subscriber (WebSocket 1013); the subscriber resumes with ``since``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from engine.core import mapper
from engine.core.events import TERMINAL_EVENTS
from gateway import protocol
from gateway.protocol import StreamId

_TERMINAL = frozenset(t.encode() for t in TERMINAL_EVENTS)


class Item:
    """One log entry on its way out; the envelope is decoded once, on first use, and shared."""

    __slots__ = ("_envelope", "_frame", "fields", "id", "partition", "sid")

    def __init__(self, partition: int, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        self.partition = partition
        self.id = entry_id.decode()
        ms, _, seq = self.id.partition("-")
        self.sid: StreamId = (int(ms), int(seq))
        self.fields = fields
        self._envelope: bytes | None = None
        self._frame: str | None = None

    @property
    def task_id(self) -> bytes:
        return self.fields.get(b"task", b"")

    @property
    def tenant(self) -> bytes:
        return self.fields.get(b"tenant", b"")

    @property
    def type(self) -> str:
        return self.fields.get(b"type", b"").decode()

    @property
    def terminal(self) -> bool:
        return self.fields.get(b"type") in _TERMINAL

    def envelope_dict(self) -> dict[str, Any]:
        """The DESIGN.md §4 envelope (raises ``EventDecodeError`` on a malformed entry)."""
        return mapper.envelope(self.id, self.fields)

    def check(self) -> None:
        """Raise ``EventDecodeError`` unless the entry decodes; a terminal event, which ends
        its task's subscriptions, is validated in full (anyone can XADD a bogus one)."""
        self.envelope  # noqa: B018 — decoded once, shared by every outbox
        if self.terminal:
            mapper.decode(self.id, self.fields)

    @property
    def envelope(self) -> bytes:
        if self._envelope is None:
            self._envelope = orjson.dumps(self.envelope_dict())
        return self._envelope

    @property
    def frame(self) -> str:
        if self._frame is None:
            self._frame = protocol.event_frame(self.envelope, self.partition)
        return self._frame


Message = Item | str  # an event, or an already-encoded control frame


class Outbox:
    """Bounded FIFO between the hub (producer, never blocks) and one connection's writer."""

    __slots__ = (
        "_bytes",
        "_max_bytes",
        "_max_items",
        "_on_overflow",
        "_queue",
        "_ready",
        "_room",
        "closed",
        "overflowed",
    )

    def __init__(self, max_items: int, max_bytes: int, on_overflow: Callable[[], None]) -> None:
        self._queue: deque[Message] = deque()
        self._bytes = 0
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._on_overflow = on_overflow
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.overflowed = False
        self.closed = False

    def __len__(self) -> int:
        return len(self._queue)

    @staticmethod
    def _size(msg: Message) -> int:
        return len(msg) if isinstance(msg, str) else len(msg.envelope) + 40

    def put(self, msg: Message) -> bool:
        """Queue ``msg``; ``False`` if the outbox is closed or just overflowed."""
        if self.overflowed or self.closed:
            return False
        size = self._size(msg)
        if len(self._queue) >= self._max_items or self._bytes + size > self._max_bytes:
            self.overflow()
            return False
        self._queue.append(msg)
        self._bytes += size
        self._ready.set()
        if len(self._queue) * 2 >= self._max_items or self._bytes * 2 >= self._max_bytes:
            self._room.clear()
        return True

    def overflow(self) -> None:
        if not self.overflowed:
            self.overflowed = True
            self._ready.set()
            self._room.set()
            self._on_overflow()

    def close(self) -> None:
        self.closed = True
        self._ready.set()
        self._room.set()

    async def get(self) -> Message | None:
        """The next message; ``None`` once the outbox is closed or overflowed."""
        while not self._queue:
            if self.closed or self.overflowed:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self.closed or self.overflowed:
            return None
        msg = self._queue.popleft()
        self._bytes -= self._size(msg)
        if len(self._queue) * 2 < self._max_items and self._bytes * 2 < self._max_bytes:
            self._room.set()
        return msg

    async def wait_room(self) -> None:
        """Wait until the outbox is at most half full (replay paces itself with this)."""
        await self._room.wait()
