"""`aiis watch` follows a task through the gateway and resumes with --since."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from engine.client import Client
from engine.core.keys import partition_of
from engine.settings import Settings
from gateway.errors import WatchError
from gateway.server import Gateway
from gateway.settings import GatewaySettings
from gateway.watch import Watcher
from projections.settings import ProjectionSettings
from tests.conftest import TOPOLOGIES, Engine, Topology
from tests.gateway.conftest import MakeGateway


async def test_watch_prints_a_tasks_events_and_resumes_after_since(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """Watching a task prints each event once; --since prints only what came after it."""
    engine.start_worker()
    gateway = await make_gateway(engine.settings)
    task_id = await engine.client.submit("hi", params={"script": ["stream:4"]})
    out = io.StringIO()
    assert await Watcher(gateway.ws_url, None, task_id, None, None, out=out).run() == 0
    ids = [line.split()[0] for line in out.getvalue().splitlines()]
    assert ids == await engine.log(task_id=task_id)
    out = io.StringIO()
    assert await Watcher(gateway.ws_url, None, task_id, None, ids[1], out=out).run() == 0
    assert [line.split()[0] for line in out.getvalue().splitlines()] == ids[2:]


PROJ = ProjectionSettings()


async def _gateway(settings: Settings, port: int = 0, **overrides: Any) -> Gateway:
    """An open-mode gateway started on ``port`` (0: any), as a restart brings one back."""
    gateway = Gateway(
        settings,
        GatewaySettings(tokens="", tokens_file=None, **overrides),
        proj=PROJ,
        host="127.0.0.1",
        port=port,
    )
    await gateway.start()
    return gateway


@contextlib.asynccontextmanager
async def _tenant_watch(
    gateway: Gateway, tenant: str
) -> AsyncIterator[tuple[Watcher, io.StringIO, asyncio.Task[int]]]:
    """``aiis watch --tenant`` running in the background, subscribed on ``gateway``: (the
    watcher, what it printed, its task). Stopped on exit."""
    out = io.StringIO()
    watcher = Watcher(gateway.ws_url, None, None, tenant, None, out=out)
    watching = asyncio.create_task(watcher.run())
    try:
        hub = gateway.ctx.hub if gateway.ctx else None
        assert hub is not None
        async with asyncio.timeout(30):
            while not hub.by_tenant.get(tenant):  # noqa: ASYNC110 - the watcher subscribed
                await asyncio.sleep(0.02)
        yield watcher, out, watching
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError, WatchError):
            await watching


async def _printed(out: io.StringIO, n: int) -> None:
    async with asyncio.timeout(30):
        while len(out.getvalue().splitlines()) < n:  # noqa: ASYNC110 - polls the output
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_a_tenant_watch_resumes_across_a_gateway_restart_on_every_partition(
    topology: Topology,
) -> None:
    """``aiis watch --tenant`` on a deployment of several partitions, live from its start: the
    gateway restarts while tasks land in every partition; the watcher resumes with one id per
    partition (from the ``cursors`` of ``subscribed`` for a partition it has no event of yet)
    and prints every TaskRequested exactly once."""
    settings = topology.settings(**({} if topology.cluster else {"partitions": 2}))
    client = Client.from_url(topology.url, settings)
    await client.store.prepare()
    first = await _gateway(settings)
    port = first.port
    second: Gateway | None = None
    ids: list[str] = []
    try:
        async with _tenant_watch(first, "acme") as (_, out, _):
            # one task first, in one partition only: the others have no event yet at the restart
            ids.append(await client.submit("before", tenant="acme"))
            await _printed(out, 1)
            await first.stop()
            for i in range(12):  # while no gateway runs: every partition gets some
                ids.append(await client.submit(f"during {i}", tenant="acme"))
            assert len({partition_of(t, settings.partitions) for t in ids}) == settings.partitions
            second = await _gateway(settings, port)
            ids.append(await client.submit("after", tenant="acme"))
            await _printed(out, len(ids))
            await asyncio.sleep(0.3)  # nothing printed twice either
            lines = out.getvalue().splitlines()
            # each task's TaskRequested once: none lost in the restart, none printed twice
            assert sorted(line.split()[1] for line in lines) == sorted(t[:12] for t in ids)
    finally:
        for gateway in (first, second):
            if gateway is not None:
                await gateway.stop()
        await client.aclose()


async def test_a_watch_outlives_more_gateway_restarts_than_its_reconnect_limit(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconnect limit counts failed tries in a row, not restarts over a watch's life: a
    tenant watch survives more restarts than ``MAX_RECONNECTS`` and still prints every event."""
    monkeypatch.setattr("gateway.watch.MAX_RECONNECTS", 2)
    settings = engine.settings
    gateway = await _gateway(settings)
    port = gateway.port
    ids = []
    try:
        async with _tenant_watch(gateway, "acme") as (_, out, watching):
            for restart in range(4):
                ids.append(await engine.client.submit(f"r{restart}", tenant="acme"))
                await _printed(out, len(ids))
                await gateway.stop()
                gateway = await _gateway(settings, port)
            assert not watching.done()
    finally:
        await gateway.stop()


async def test_a_quiet_partitions_resume_point_follows_the_log_so_trimming_does_not_stop_it(
    real_client: Callable[..., Client],
) -> None:
    """The gateway tells a tenant subscription where it is in every partition now and then
    (``cursors`` frames), so a watch whose tenant is quiet in a partition resumes there from a
    recent point: the log trimmed below the watch's start (as archiving does) and a gateway
    restart later, the watch goes on and prints what comes, instead of ``since_too_old``."""
    client = real_client(partitions=2)
    await client.store.prepare()
    settings = client.settings
    for i in range(4):  # both partitions' logs hold entries before the watch starts
        await client.submit(f"earlier {i}", tenant="other")
    gateway = await _gateway(settings, cursors_interval_s=0.05)
    port = gateway.port
    try:
        async with _tenant_watch(gateway, "acme") as (watcher, out, watching):
            ids = [await client.submit("acme's one", tenant="acme")]
            quiet = 1 - partition_of(ids[0], 2)
            others = [await client.submit(f"other {i}", tenant="other") for i in range(4)]
            assert any(partition_of(t, 2) == quiet for t in others)  # the quiet one moves on
            await _printed(out, 1)
            log = client.store.keys(quiet).log
            last = (await client.store.redis.xrevrange(log, count=1))[0][0].decode()
            async with asyncio.timeout(30):  # the watch hears where the quiet partition is
                while watcher.cursor.get(quiet) != last:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            await client.store.redis.xtrim(log, minid=last)  # archived and trimmed below it
            await gateway.stop()
            gateway = await _gateway(settings, port, cursors_interval_s=0.05)
            while partition_of(ids[-1], 2) != quiet:
                ids.append(await client.submit("acme again", tenant="acme"))
            await _printed(out, len(ids))
            assert not watching.done()
    finally:
        await gateway.stop()
