"""``aiis watch``: follow events through the gateway's WebSocket, resuming after a disconnect
(server restart, 1013 slow-subscriber close) from the last event it printed."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TextIO

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from engine.core.events import TERMINAL_EVENTS
from gateway.errors import WatchError

RESUMABLE = {1001, 1006, 1011, 1012, 1013}
MAX_RECONNECTS = 20


def describe(env: dict[str, Any]) -> str:
    data = env.get("data") or {}
    head = f"{env['id']}  {env['task_id'][:12]}  {env['tenant']:<10} {env['type']}"
    if env["type"] == "TaskSucceeded":
        usage = data.get("usage") or {}
        return (
            f"{head}  {data.get('provider')}/{data.get('model')}  tokens "
            f"{usage.get('input_tokens')}/{usage.get('output_tokens')}  "
            f"${data.get('cost_usd')}  {((data.get('result') or {}).get('text') or '')[:200]!r}"
        )
    if env["type"] in ("TaskFailed", "TaskRetryScheduled"):
        err = data.get("error") or {}
        return f"{head}  {err.get('error_class')}: {err.get('message')}"
    if env["type"] == "TaskRequested" and data.get("correlation_id"):
        return f"{head}  correlation {data['correlation_id']}"
    if env["type"] == "TaskProgress":
        return f"{head}  {data.get('delta') or data.get('notice') or ''!r}"
    return head


class Watcher:
    def __init__(
        self,
        url: str,
        token: str | None,
        task_id: str | None,
        tenant: str | None,
        since: str | None,
        as_json: bool = False,
        out: TextIO = sys.stdout,
    ) -> None:
        self.url, self.token, self.task_id, self.tenant = url, token, task_id, tenant
        # a tenant's since on P > 1 partitions is one id per partition: "id0,id1,…"
        self.since: str | list[str] | None = since.split(",") if since and "," in since else since
        self.cursor: dict[int, str] = {}  # partition -> the last event id printed
        self.partitions = 0  # a tenant subscription's, from its `subscribed` reply
        self.subscribed = False  # the current session got its `subscribed`
        self.as_json, self.out = as_json, out
        self.outcome: str | None = None

    def _since(self) -> str | list[str] | None:
        if not self.cursor:
            return self.since
        if self.task_id is not None:
            return next(iter(self.cursor.values()))
        if self.partitions > 1:
            return [self.cursor[p] for p in range(self.partitions)]
        if set(self.cursor) == {0}:
            return self.cursor[0]
        return self.since  # a gateway that sends no cursors: P > 1 needs every partition's id

    async def run(self) -> int:
        attempt = 0  # failed tries since the last session that subscribed
        while True:
            self.subscribed = False
            try:
                return await self._session()
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
                if code not in RESUMABLE or attempt >= MAX_RECONNECTS:
                    raise WatchError(f"connection closed ({code})") from None
                print(f"… connection closed ({code}); resuming", file=sys.stderr)
            except OSError as exc:
                if attempt >= MAX_RECONNECTS:
                    raise WatchError(f"cannot reach the gateway at {self.url}: {exc}") from None
            # a long watch outlives any number of restarts: only tries in a row are counted
            attempt = 0 if self.subscribed else attempt + 1
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))

    async def _session(self) -> int:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            ws = await connect(self.url, additional_headers=headers, max_size=2**24)
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise WatchError(f"gateway refused the connection: HTTP {status}") from None
        async with ws:
            target: dict[str, Any]
            if self.task_id:
                target = {"task_id": self.task_id}
            else:
                tenant = self.tenant
                if tenant is None:
                    await ws.send(orjson.dumps({"op": "auth", "token": self.token or "-"}))
                    reply = orjson.loads(await ws.recv())
                    tenant = reply.get("tenant") if reply.get("op") == "authenticated" else "*"
                target = {"tenant": tenant}
            request = {"op": "subscribe", **target}
            since = self._since()
            if since is not None:
                request["since"] = since
            await ws.send(orjson.dumps(request))
            async for raw in ws:
                msg = orjson.loads(raw)
                if msg.get("op") == "error":
                    raise WatchError(f"{msg['code']}: {msg['message']}")
                op = msg.get("op")
                if op == "subscribed":
                    self.subscribed = True
                    # where the subscription starts in every partition: a partition without an
                    # event yet resumes from there (the others from their last event printed)
                    starts = msg.get("cursors", [])
                    self.partitions = len(starts) or self.partitions
                    for p, start in enumerate(starts):
                        self.cursor.setdefault(p, start)
                elif op == "cursors" and self.partitions == len(msg["cursors"]):
                    # the hub's position: every event of ours before it was printed already
                    self.cursor.update(enumerate(msg["cursors"]))
                if op != "event":
                    continue
                env = msg["event"]
                self.cursor[msg.get("partition", 0)] = env["id"]
                line = orjson.dumps(env).decode() if self.as_json else describe(env)
                print(line, file=self.out, flush=True)
                if self.task_id and env["type"] in TERMINAL_EVENTS:
                    return 0 if env["type"] == "TaskSucceeded" else 1
        if ws.close_code in RESUMABLE:
            # a clean close (1001: the gateway restarts) ends the iteration without raising;
            # the watch resumes all the same
            raise ws.close_exc
        return 0
