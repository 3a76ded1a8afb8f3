"""Bad input gets an error with a code; the connection and the server stay healthy."""

from __future__ import annotations

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import Engine
from tests.gateway.conftest import TOKENS_ENV, MakeGateway, recv, request


async def _alive(ws: ClientConnection) -> None:
    assert (await request(ws, op="ping", ref="alive"))["op"] == "pong"


async def test_each_bad_frame_is_answered_and_the_connection_survives(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """Unknown op, invalid JSON, oversized frame, bad or stale since: error codes, no close."""
    gateway = await make_gateway(engine.settings, max_message_bytes=4096)
    task_id = await engine.client.submit("hello")
    for _ in range(3):
        await engine.client.submit("more")
    store = engine.client.store
    log_ids = await engine.log()
    async with connect(gateway.ws_url) as ws:
        cases: list[tuple[bytes | str, str]] = [
            (b'{"op": "fly"}', "unknown_op"),
            ("{oops", "bad_json"),
            (orjson.dumps({"op": "ping", "ref": "x" * 5000}), "too_large"),
            (orjson.dumps({"op": "subscribe", "tenant": "default", "since": "abc"}), "bad_since"),
            (orjson.dumps({"op": "subscribe", "task_id": "f" * 32}), "not_found"),
            (
                orjson.dumps({"op": "submit", "task": {"input": "x", "kind": "poem"}}),
                "invalid_task",
            ),
            (orjson.dumps({"op": "unsubscribe", "tenant": "nobody"}), "not_subscribed"),
            (
                orjson.dumps({"op": "subscribe", "tenant": "default", "since": "99999999999999-0"}),
                "since_ahead",
            ),
        ]
        for frame, code in cases:
            await ws.send(frame)
            reply = await recv(ws)
            assert (reply["op"], reply["code"]) == ("error", code), frame
            await _alive(ws)
        invalid = await request(ws, op="submit", task={"input": "x", "priority": "urgent"})
        assert invalid["field"] == "priority"

        # trim the log's two oldest entries: a since before them cannot be replayed gaplessly
        await store.redis.xtrim(store.keys(0).log, minid=log_ids[2], approximate=False)
        stale = await request(ws, op="subscribe", task_id=task_id, since=log_ids[0])
        assert stale["code"] == "since_too_old"
        assert stale["oldest"] == log_ids[2] and log_ids[2] in stale["message"]
        ok = await request(ws, op="subscribe", tenant="default", since=log_ids[2])
        assert ok["op"] == "subscribed"
        await _alive(ws)


async def test_frame_over_the_hard_limit_closes_only_that_connection(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """A frame over max_frame_bytes closes its connection with 1009; others carry on."""
    gateway = await make_gateway(engine.settings, max_frame_bytes=64 * 1024)
    async with connect(gateway.ws_url) as other, connect(gateway.ws_url) as ws:
        await ws.send("x" * 100_000)
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.sent is not None and closed.value.sent.code == 1009
        await _alive(other)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_requests_without_auth_are_refused_until_authenticated(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """No token: subscribe/submit get 'unauthorized'; after {op: auth} they work."""
    gateway = await make_gateway(engine.settings, tokens=TOKENS_ENV)
    async with connect(gateway.ws_url) as ws:
        for msg in (
            {"op": "subscribe", "tenant": "acme"},
            {"op": "submit", "task": {"input": "x"}},
        ):
            assert (await request(ws, **msg))["code"] == "unauthorized"
        assert (await request(ws, op="auth", token="wrong"))["code"] == "unauthorized"
        assert (await request(ws, op="auth", token="tok-acme"))["tenant"] == "acme"
        assert (await request(ws, op="subscribe", tenant="acme"))["op"] == "subscribed"
    with pytest.raises(InvalidStatus) as denied:
        async with connect(gateway.ws_url + "?token=wrong"):
            pass
    assert denied.value.response.status_code == 401


async def test_connection_limit_refuses_with_503(engine: Engine, make_gateway: MakeGateway) -> None:
    """Past max_connections a new WebSocket is refused (503); existing ones are unaffected."""
    gateway = await make_gateway(engine.settings, max_connections=2)
    async with connect(gateway.ws_url) as a, connect(gateway.ws_url) as b:
        await _alive(a)
        with pytest.raises(InvalidStatus) as refused:
            async with connect(gateway.ws_url):
                pass
        assert refused.value.response.status_code == 503
        await _alive(b)
