"""The charts in the dashboard's stats push: each subscriber gets the window it chose (and can
switch), a tenant token sees only its own tenant's cost, the script is served."""

from __future__ import annotations

from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import Engine
from tests.faulty_run import finished_and_projected
from tests.gateway.conftest import TOKENS_ENV, MakeGateway, recv, request


async def _charts(ws: ClientConnection, window: str) -> dict[str, Any]:
    """The charts of the next stats frame of ``window`` (frames of the previous one skipped)."""
    while True:
        msg = await recv(ws)
        if msg["op"] == "stats" and (msg["stats"]["charts"] or {}).get("window") == window:
            charts: dict[str, Any] = msg["stats"]["charts"]
            return charts


async def test_each_subscriber_gets_its_window_and_a_tenant_only_its_cost(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """acme asks for 1 h, the operator for 24 h: each frame carries that window with every
    completion; acme's cost is its own tenant's only (no per-provider total), the operator's
    every tenant's; acme switches to 15 min; an unknown window is refused."""
    engine.start_worker()
    await finished_and_projected(engine.client, engine.settings, ["acme", "acme", "beta", "beta"])
    gateway = await make_gateway(engine.settings, tokens=TOKENS_ENV, stats_interval_s=0.1)
    auth = "Authorization"
    async with (
        connect(gateway.ws_url, additional_headers={auth: "Bearer tok-acme"}) as acme,
        connect(gateway.ws_url, additional_headers={auth: "Bearer tok-ops"}) as ops,
    ):
        assert (await request(acme, op="subscribe", stats="1h"))["op"] == "subscribed"
        assert (await request(ops, op="subscribe", stats="24h"))["op"] == "subscribed"
        mine = await _charts(acme, "1h")
        assert (mine["n"], mine["step_ms"]) == (60, 60_000)
        assert mine["totals"]["completed"]["succeeded"] == 4
        assert set(mine["usd_tenant"]) == {"acme"} and mine["usd_provider"] == {}
        assert set(mine["totals"]["usd_nanos_tenant"]) == {"acme"}
        everyone = await _charts(ops, "24h")
        assert (everyone["n"], everyone["step_ms"]) == (144, 600_000)
        assert set(everyone["usd_tenant"]) == {"acme", "beta"}
        assert set(everyone["usd_provider"]) == {"echo"}
        assert everyone["totals"]["calls"]["echo"] == {"ok": 4, "fail": 0}
        assert (await request(acme, op="subscribe", stats="15m"))["op"] == "subscribed"
        assert (await _charts(acme, "15m"))["step_ms"] == 10_000
        refused = await request(acme, op="subscribe", stats="2h")
        assert refused["code"] == "bad_message"
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        script = await http.get("/charts.js")
    assert script.status_code == 200 and "aiisCharts" in script.text
    assert script.headers["content-type"].startswith("text/javascript")
