"""The stats push builds one frame per tenant and window and sends it to every subscriber that
shares them: subscribers of different tenants on the same window still each get only their
own tenant's tasks and cost."""

from __future__ import annotations

from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import Engine
from tests.faulty_run import finished_and_projected
from tests.gateway.conftest import TOKENS_ENV, MakeGateway, request


async def _frame(ws: ClientConnection, done: int) -> tuple[dict[str, Any], str | bytes]:
    """The next stats frame whose charts count ``done`` completions, decoded and raw."""
    while True:
        raw = await ws.recv()
        msg = orjson.loads(raw)
        charts = msg.get("stats", {}).get("charts") or {}
        if (
            msg["op"] == "stats"
            and charts.get("totals", {}).get("completed", {}).get("succeeded") == done
            and len(msg["stats"]["recent"]) > 0
        ):
            return msg["stats"], raw


async def test_tenants_on_one_window_see_only_their_own(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """acme, beta and two operator connections all on the 1 h window: acme's frame holds only
    acme's tasks and cost, beta's only beta's, and the two operators get the same frame with
    everyone's."""
    engine.start_worker()
    await finished_and_projected(engine.client, engine.settings, ["acme", "acme", "beta"])
    gateway = await make_gateway(engine.settings, tokens=TOKENS_ENV, stats_interval_s=0.1)
    auth = "Authorization"

    def conn(token: str) -> Any:
        return connect(gateway.ws_url, additional_headers={auth: f"Bearer {token}"})

    async with (
        conn("tok-acme") as acme,
        conn("tok-beta") as beta,
        conn("tok-ops") as ops1,
        conn("tok-ops") as ops2,
    ):
        for ws in (acme, beta, ops1, ops2):
            assert (await request(ws, op="subscribe", stats="1h"))["op"] == "subscribed"
        mine, _ = await _frame(acme, 3)
        assert {r["tenant"] for r in mine["recent"]} == {"acme"}
        assert mine["cost_today"]["scope"] == "acme"
        assert set(mine["charts"]["usd_tenant"]) == {"acme"}
        theirs, _ = await _frame(beta, 3)
        assert {r["tenant"] for r in theirs["recent"]} == {"beta"}
        assert set(theirs["charts"]["usd_tenant"]) == {"beta"}
        everyone, raw1 = await _frame(ops1, 3)
        assert {r["tenant"] for r in everyone["recent"]} == {"acme", "beta"}
        assert everyone["cost_today"]["scope"] == "all"
        assert set(everyone["charts"]["usd_tenant"]) == {"acme", "beta"}
        other, raw2 = await _frame(ops2, 3)
        while other["ts"] != everyone["ts"]:  # the same push: byte for byte the same frame
            if other["ts"] < everyone["ts"]:
                other, raw2 = await _frame(ops2, 3)
            else:
                everyone, raw1 = await _frame(ops1, 3)
        assert raw1 == raw2
