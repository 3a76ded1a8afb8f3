"""The chaos run's WebSocket subscriber: follows the whole tenant over the gateway and resumes
after every cut from its last id of each partition (with several partitions ``since`` is the
list of those ids, see gateway/since.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException


class Subscriber:
    def __init__(self, port: int, partitions: int = 1) -> None:
        self.url = f"ws://127.0.0.1:{port}/v1/ws"
        self.partitions = partitions
        self.events: list[dict[str, Any]] = []
        self.partitions_of: list[int] = []  # each event's partition (ids are per partition)
        self.cursor = ["0-0"] * partitions
        self.resumes = 0
        self.errors: list[str] = []
        self._stop = asyncio.Event()

    @property
    def since(self) -> str | list[str]:
        return self.cursor[0] if self.partitions == 1 else list(self.cursor)

    async def run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                async with ws_connect(self.url, open_timeout=3, max_size=2**24) as ws:
                    if not first:
                        self.resumes += 1
                    first = False
                    sub = {"op": "subscribe", "tenant": "default", "since": self.since}
                    await ws.send(orjson.dumps(sub).decode())
                    async for raw in ws:
                        msg = orjson.loads(raw)
                        if msg.get("op") == "event":
                            event, partition = msg["event"], int(msg.get("partition", 0))
                            self.events.append(event)
                            self.partitions_of.append(partition)
                            self.cursor[partition] = event["id"]
                        elif msg.get("op") == "error":
                            self.errors.append(str(msg))
                        if self._stop.is_set():
                            return
            except (OSError, WebSocketException, TimeoutError):
                await asyncio.sleep(0.2)

    @property
    def keys(self) -> list[tuple[int, str]]:
        """(partition, event id) of every event received: unique per event."""
        return [(p, e["id"]) for p, e in zip(self.partitions_of, self.events, strict=True)]

    def stop(self) -> None:
        self._stop.set()
