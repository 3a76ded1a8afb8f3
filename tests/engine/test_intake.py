"""The intake stream (issue 17, docs/intake.md): entries XADDed by any producer — redis-py the
way redis-cli writes them, or a FastStream publisher — become tasks through exactly
``Client.submit``'s admission, once each, and the refused ones land in the rejected stream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from faststream.redis import RedisBroker
from faststream.redis.parser.binary import BinaryMessageFormatV1
from websockets.asyncio.client import connect as ws_connect

from engine.admission.stream import IntakeEntry, Rejection, parse_entry
from engine.client import Client
from engine.core import mapper
from engine.core.events import TaskRequested
from engine.core.keys import INTAKE_GROUP, intake_rejected_key, legacy_intake_key
from engine.errors import RedisCommandError
from engine.runtime.intake import Intake, build_app, stream_of
from engine.settings import Settings
from tests.conftest import TOPOLOGIES, Topology, Workers, fast_settings
from tests.gateway.conftest import TOKENS_ENV, MakeGateway, make_gateway, recv, request

__all__ = ["make_gateway"]  # the gateway fixture, used here

# --- entries, parsed without I/O --------------------------------------------------------


def _fs_message(body: bytes, correlation_id: str = "c-1") -> bytes:
    return asyncio.run(
        BinaryMessageFormatV1.encode(
            message=body, reply_to=None, headers={"x": "y"}, correlation_id=correlation_id
        )
    )


def test_plain_and_faststream_entries_parse_to_the_same_task() -> None:
    """A plain ``task`` field and FastStream's binary message (encoded by faststream itself)
    give the same task object, each with its correlation id."""
    task = {"input": "hi", "tenant": "acme"}
    plain = parse_entry("1-0", {b"task": orjson.dumps(task), b"correlation_id": b"p-1"}, 10_000)
    fs = parse_entry("1-1", {b"__data__": _fs_message(orjson.dumps(task), "f-1")}, 10_000)
    assert plain == IntakeEntry("1-0", task, "p-1", "plain")
    assert fs == IntakeEntry("1-1", task, "f-1", "faststream")


BAD_ENTRIES: list[tuple[str, dict[bytes, bytes], str, str]] = [
    ("missing task", {b"correlation_id": b"c"}, "bad_message", "task"),
    ("not JSON", {b"task": b"{nope"}, "bad_json", "task"),
    ("not an object", {b"task": b"[1, 2]"}, "bad_message", "task"),
    ("unknown entry field", {b"task": b"{}", b"colour": b"red"}, "bad_message", "colour"),
    ("oversize", {b"task": b'{"input": "' + b"x" * 5000 + b'"}'}, "too_large", "task"),
    ("long correlation id", {b"task": b"{}", b"correlation_id": b"c" * 129}, "bad_message",
     "correlation_id"),
    ("faststream, unparsable body", {b"__data__": _fs_message(b"{not json")}, "bad_json", "task"),
    ("faststream, cut short", {b"__data__": _fs_message(b"{}")[:20]}, "bad_message", "__data__"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "fields", "code", "field"), BAD_ENTRIES, ids=[c[0] for c in BAD_ENTRIES]
)
def test_bad_entries_are_refused_with_the_http_codes(
    case: str, fields: dict[bytes, bytes], code: str, field: str
) -> None:
    """Each malformed entry is a ``Rejection`` naming its problem with the HTTP API's code."""
    got = parse_entry("5-0", fields, 4096)
    assert isinstance(got, Rejection)
    assert (got.code, got.field) == (code, field)


# --- admission, in-process --------------------------------------------------------------


Started = Callable[..., Awaitable[Intake]]


@pytest.fixture
async def intake_app() -> AsyncIterator[Started]:
    """Starts the FastStream intake application in-process; always stops it."""
    apps: list[Any] = []

    async def start(settings: Settings, consumers: int = 1) -> Intake:
        app, intake = build_app(settings, consumers)
        await app.start()
        apps.append(app)
        return intake

    yield start
    for app in apps:
        await app.stop()


async def _requested(client: Client) -> list[TaskRequested]:
    out = []
    for p in range(client.settings.partitions):
        for eid, fields in await client.store.entries(client.store.keys(p).log):
            event = mapper.decode(eid, fields)
            if isinstance(event, TaskRequested):
                out.append(event)
    return out


async def _wait(predicate: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - polls Redis
            await asyncio.sleep(0.05)


async def _rejected(client: Client, settings: Settings) -> list[dict[str, str]]:
    entries = await client.store.entries(intake_rejected_key(stream_of(settings)))
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in entries]


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_redis_cli_and_faststream_producers_reach_succeeded_with_correlation(
    topology: Topology, workers: Workers, intake_app: Started, make_gateway: MakeGateway
) -> None:
    """A raw XADD (as redis-cli writes it) and a FastStream publisher each get a task to
    TaskSucceeded through a real worker; a tenant's WebSocket subscriber sees each correlation
    id on its TaskRequested, and ``find_correlation`` finds each task without a log scan."""
    settings = topology.settings()
    client = Client.from_url(topology.url, settings)
    await client.store.prepare()
    workers.start(client)
    gateway = await make_gateway(settings, tokens=TOKENS_ENV)
    intake = await intake_app(settings)
    design_name = f"{settings.namespace}:intake"  # DESIGN.md §4, the producers' contract
    assert intake.stream == design_name
    try:
        async with ws_connect(
            f"ws://127.0.0.1:{gateway.port}/v1/ws",
            additional_headers={"Authorization": "Bearer tok-acme"},
        ) as ws:
            assert (await request(ws, op="subscribe", tenant="acme"))["op"] == "subscribed"
            raw = client.store.redis
            await raw.xadd(
                design_name,
                {"task": orjson.dumps({"input": "from redis-cli", "tenant": "acme"}),
                 "correlation_id": "order-42"},
            )  # fmt: skip
            broker = RedisBroker(topology.url) if not topology.cluster else None
            if broker is None:
                from faststream.redis.broker.cluster_broker import RedisClusterBroker

                broker = RedisClusterBroker(topology.url)
            async with broker:
                await broker.publish(
                    {"input": "from faststream", "tenant": "acme"},
                    stream=design_name,
                    correlation_id="fs-7",
                )
            seen: dict[str, str] = {}  # correlation id -> task id
            done: set[str] = set()
            async with asyncio.timeout(30):
                while len(done) < 2 or len(seen) < 2:
                    msg = await recv(ws)
                    if msg["op"] != "event":
                        continue
                    env = msg["event"]
                    if env["type"] == "TaskRequested":
                        seen[env["data"]["correlation_id"]] = env["task_id"]
                        assert env["data"]["intake_id"]
                    if env["type"] == "TaskSucceeded":
                        done.add(env["task_id"])
        assert set(seen) == {"order-42", "fs-7"}
        assert done == set(seen.values())
        assert await client.find_correlation("order-42", tenant="acme") == seen["order-42"]
        assert await client.find_correlation("fs-7", tenant="acme") == seen["fs-7"]
    finally:
        await workers.stop_all()
        await client.aclose()


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_entries_left_in_the_old_default_stream_are_admitted_after_an_upgrade(
    topology: Topology, intake_app: Started, caplog: pytest.LogCaptureFixture
) -> None:
    """Before this name followed DESIGN.md, the default stream was ``<ns>:{intake}``. Entries
    left there by an upgrade, and entries old producers still write there, are admitted (a
    bad one refused into that stream's own rejected stream), with a warning naming both
    streams; nothing is stranded."""
    settings = topology.settings(intake_reclaim_s=0.2)
    client = Client.from_url(topology.url, settings)
    await client.store.prepare()
    old = f"{settings.namespace}:{{intake}}"
    raw = client.store.redis
    try:
        await raw.xadd(old, {"task": orjson.dumps({"input": "left behind", "tenant": "acme"})})
        await raw.xadd(old, {"task": b"{not json"})
        intake = await intake_app(settings)
        assert intake.stream == f"{settings.namespace}:intake"

        async def inputs() -> set[str]:
            return {str(e.data.input) for e in await _requested(client)}

        await _wait(lambda: _has(inputs, {"left behind"}))
        await raw.xadd(old, {"task": orjson.dumps({"input": "old producer", "tenant": "acme"})})
        await _wait(lambda: _has(inputs, {"left behind", "old producer"}))
        rejected = await client.store.entries(intake_rejected_key(old))
        assert [f[b"code"] for _, f in rejected] == [b"bad_json"]
        summary: Any = await raw.xpending(old, INTAKE_GROUP)
        assert summary["pending"] == 0  # every entry acknowledged
        assert f"{settings.namespace}:intake" in caplog.text and old in caplog.text
    finally:
        await client.aclose()


async def _has(read: Callable[[], Awaitable[set[str]]], wanted: set[str]) -> bool:
    return await read() == wanted


async def test_an_entry_admitted_twice_is_one_task(
    real_client: Callable[..., Client],
) -> None:
    """A batch admitted again (a crash between TaskRequested and XACK redelivers it) makes no
    second task: without an idempotency key the entry id names the task."""
    client = real_client()
    raw = client.store.redis
    intake, entries = await _read_added(
        client, [{"task": orjson.dumps({"input": f"t{i}"})} for i in range(5)]
    )
    await intake.admit(entries)
    await intake.admit(entries)  # the redelivery
    requested = await _requested(client)
    assert len(requested) == 5
    assert sorted(e.data.intake_id or "" for e in requested) == sorted(
        e[0].decode() for e in entries
    )
    assert (await raw.xpending(intake.stream, INTAKE_GROUP))["pending"] == 0


async def test_a_reused_idempotency_key_with_another_input_is_rejected(
    real_client: Callable[..., Client],
) -> None:
    """An entry whose idempotency key already names a task of another input lands in the
    rejected stream as ``idempotency_conflict`` naming the field; one with the same input
    attaches to that task: one task in all."""
    client = real_client()
    intake, entries = await _read_added(
        client,
        [
            {
                "task": orjson.dumps({"input": prompt, "idempotency_key": "order-9"}),
                "correlation_id": prompt,
            }
            for prompt in ("hello", "hello", "goodbye")
        ],
    )
    await intake.admit(entries)
    assert len(await _requested(client)) == 1
    (rejected,) = await _rejected(client, client.settings)
    assert rejected["code"] == "idempotency_conflict"
    assert (rejected["field"], rejected["correlation_id"]) == ("idempotency_key", "goodbye")


async def test_every_bad_entry_lands_in_the_rejected_stream_and_the_rest_go_on(
    real_client: Callable[..., Client], intake_app: Started
) -> None:
    """Every bad-input case gets a rejected record with its code while the process (two
    consumers) keeps admitting: a good entry after them is admitted, nothing of the bad ones
    reaches the log, and every entry is acknowledged."""
    client = real_client(max_request_bytes=4096)
    await client.store.prepare()
    intake = await intake_app(client.settings, consumers=2)
    raw = client.store.redis
    cases = [
        *((fields, code) for _, fields, code, _ in BAD_ENTRIES),
        ({b"task": orjson.dumps({"input": "x", "colour": "red"})}, "invalid_task"),
        ({b"task": orjson.dumps({"input": "x", "kind": "video"})}, "invalid_task"),
    ]
    ids = [(await raw.xadd(intake.stream, f)).decode() for f, _ in cases]  # type: ignore[arg-type]
    await raw.xadd(intake.stream, {"task": orjson.dumps({"input": "good one"})})

    async def settled() -> bool:
        return len(await _requested(client)) == 1 and len(
            await _rejected(client, client.settings)
        ) == len(cases)

    await _wait(settled)
    rejected = {r["intake_id"]: r["code"] for r in await _rejected(client, client.settings)}
    assert rejected == {i: code for i, (_, code) in zip(ids, cases, strict=True)}
    assert (await raw.xpending(intake.stream, INTAKE_GROUP))["pending"] == 0


async def test_pii_is_redacted_exactly_as_through_submit(
    real_client: Callable[..., Client], intake_app: Started
) -> None:
    """A prompt with personal data admitted from the intake is stored exactly as the same
    prompt submitted with ``Client.submit``."""
    client = real_client(pii_policy="redact")
    await client.store.prepare()
    intake = await intake_app(client.settings)
    prompt = "mail jane.doe@example.com or call +1 415 555 0100"
    direct = await client.submit(prompt)
    await client.store.redis.xadd(intake.stream, {"task": orjson.dumps({"input": prompt})})
    await _wait(lambda: _count(client, 2))
    by_id = {e.task_id: e for e in await _requested(client)}
    via_intake = next(e for t, e in by_id.items() if t != direct)
    assert "jane.doe@example.com" not in str(by_id[direct].data.input)
    assert via_intake.data.input == by_id[direct].data.input


async def _count(client: Client, n: int) -> bool:
    return len(await _requested(client)) == n


async def test_budgets_and_the_tenant_allow_list_apply(
    real_client: Callable[..., Client], intake_app: Started
) -> None:
    """A tenant over its budget is refused with ``budget_exceeded``, a tenant outside
    AIIS_INTAKE_TENANTS with ``tenant_not_allowed``; an allowed tenant within budget passes."""
    client = real_client(budgets='{"tenants": {"poor": 0.0000001}}', intake_tenants="poor,rich")
    await client.store.prepare()
    intake = await intake_app(client.settings)
    raw = client.store.redis
    for tenant in ("poor", "stranger", "rich"):
        task = {"input": "hello", "tenant": tenant, "params": {"model": "gemini-2.5-flash"}}
        await raw.xadd(intake.stream, {"task": orjson.dumps(task)})

    async def settled() -> bool:
        return len(await _rejected(client, client.settings)) == 2 and await _count(client, 1)

    await _wait(settled)
    codes = sorted(r["code"] for r in await _rejected(client, client.settings))
    assert codes == ["budget_exceeded", "tenant_not_allowed"]
    assert (await _requested(client))[0].tenant == "rich"


async def test_a_full_queue_keeps_the_entry_pending_until_its_deadline(
    real_client: Callable[..., Client], workers: Workers, intake_app: Started
) -> None:
    """At the depth limit an entry is not refused: it stays pending and is admitted once the
    queue drains; one whose deadline passes first is refused with ``queue_full``."""
    client = real_client(queue_max_depth=1, intake_reclaim_s=0.2)
    await client.store.prepare()
    await client.submit("fills the queue")
    intake = await intake_app(client.settings)
    raw = client.store.redis
    await raw.xadd(intake.stream, {"task": orjson.dumps({"input": "patient", "deadline_s": 600})})
    await raw.xadd(intake.stream, {"task": orjson.dumps({"input": "hasty", "deadline_s": 0.3})})
    await _wait(lambda: _rejected_n(client, 1))
    assert [r["code"] for r in await _rejected(client, client.settings)] == ["queue_full"]
    assert await _count(client, 1)  # the patient one waits, pending
    assert (await raw.xpending(intake.stream, INTAKE_GROUP))["pending"] == 1
    workers.start(client)
    await _wait(lambda: _count(client, 2))
    await _wait(lambda: _pending_n(client, intake.stream, 0))


async def _rejected_n(client: Client, n: int) -> bool:
    return len(await _rejected(client, client.settings)) == n


async def _pending_n(client: Client, stream: str, n: int) -> bool:
    summary: Any = await client.store.redis.xpending(stream, INTAKE_GROUP)
    return int(summary["pending"]) == n


@pytest.mark.slow
async def test_sigkill_of_aiis_intake_mid_batch_leaves_each_entry_exactly_one_task(
    redis_url: str,
) -> None:
    """600 entries, the ``aiis intake`` process SIGKILLed while it admits them and started
    again: every entry becomes exactly one task (a redelivered entry finds its task), and
    nothing stays pending."""
    settings = fast_settings(redis_url=redis_url, partitions=2, intake_reclaim_s=0.5)
    client = Client.from_url(redis_url, settings)
    await client.store.prepare()
    stream = stream_of(settings)
    async with client.store.redis.pipeline(transaction=False) as pipe:
        for i in range(600):
            pipe.xadd(stream, {"task": orjson.dumps({"input": f"entry {i}"})})
        ids = {eid.decode() for eid in await pipe.execute()}
    env = {
        **os.environ,
        "AIIS_REDIS_URL": redis_url,
        "AIIS_NAMESPACE": settings.namespace,
        "AIIS_PARTITIONS": "2",
        "AIIS_INTAKE_BATCH": "20",
        "AIIS_INTAKE_RECLAIM_S": "0.5",
    }
    argv = [sys.executable, "-m", "engine", "intake"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        first = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        procs.append(first)
        await _wait(lambda: _at_least(client, 20), timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert len(await _requested(client)) < 600  # it died mid-way
        second = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        procs.append(second)
        await _wait(lambda: _at_least(client, 600), timeout=60)
        await _wait(lambda: _pending_n(client, stream, 0), timeout=30)
        requested = await _requested(client)
        assert len(requested) == 600
        assert {e.data.intake_id for e in requested} == ids
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        await client.aclose()


async def _at_least(client: Client, n: int) -> bool:
    return len(await _requested(client)) >= n


def test_aiis_watch_shows_the_correlation_id() -> None:
    """``aiis watch`` prints an intake task's correlation id on its TaskRequested line."""
    from gateway.watch import describe

    env = {"id": "1-0", "task_id": "ab" * 16, "tenant": "acme", "type": "TaskRequested"}
    line = describe({**env, "data": {"correlation_id": "order-42", "intake_id": "5-0"}})
    assert line.endswith("correlation order-42")


def test_asyncapi_describes_the_intake_both_formats_and_the_rejected_stream() -> None:
    """The AsyncAPI document names the intake channel with the plain and the FastStream
    format, and the rejected stream."""
    from projections import asyncapi

    doc = orjson.dumps(asyncapi.build()).decode()
    for name in ("IntakePlain", "IntakeFastStream", "IntakeRejected", '"aiis:intake:rejected"'):
        assert name in doc


async def test_the_stream_is_trimmed_below_what_the_group_still_needs(
    real_client: Callable[..., Client],
) -> None:
    """Acknowledged entries are trimmed away; a pending one (and what follows it) is kept."""
    client = real_client()
    intake, entries = await _read_added(
        client, [{"task": orjson.dumps({"input": f"t{i}"})} for i in range(300)]
    )
    await intake.admit(entries[:150])  # the rest stays pending
    await intake.trim_once()
    left = await client.store.entries(intake.stream)
    assert len(left) < 300
    assert [e[0] for e in left[-150:]] == [e[0] for e in entries[150:]]  # nothing pending lost
    await intake.admit(entries[150:])
    # one more, not yet read
    await client.store.redis.xadd(intake.stream, {"task": orjson.dumps({"input": "new"})})
    await intake.trim_once()
    left = await client.store.entries(intake.stream)
    assert 1 <= len(left) < 150  # approximate trimming keeps at most a node's worth
    assert left[-1][1] == {b"task": b'{"input":"new"}'}


async def test_a_submitted_task_has_no_intake_fields(real_client: Callable[..., Client]) -> None:
    """A task not from the intake writes TaskRequested without correlation_id and intake_id
    (its bytes are as before the intake existed)."""
    client = real_client()
    await client.submit("plain submit")
    (_, fields), *_ = await client.store.entries(client.store.keys(0).log)
    data = orjson.loads(fields[b"data"])
    assert "correlation_id" not in data and "intake_id" not in data


async def test_redis_unreachable_is_logged_once_and_raised_for_a_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With Redis gone, admitting a batch raises ``RedisUnavailable`` (the entries stay
    pending) and the outage is logged once however often it is retried."""
    import socket

    from engine.errors import RedisUnavailable
    from engine.runtime.connection import connect

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"
    settings = fast_settings(redis_url=dead)
    client = Client(connect(dead), settings)
    intake = Intake(client, settings, "c1")
    entries = [(b"1-0", {b"task": b'{"input": "x"}'})]
    for _ in range(3):
        with pytest.raises(RedisUnavailable):
            await intake.admit(entries)
        intake.outage.failed(RedisUnavailable("down"))
    logged = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(logged) == 1
    await client.aclose()


async def _read_added(
    client: Client, added: list[dict[bytes | str, bytes | str]]
) -> tuple[Intake, list[Any]]:
    """An ``Intake`` of consumer c1 (prepared), ``added`` XADDed to its stream and read back by
    the group as a redelivery would hand them over: (intake, entries)."""
    intake = Intake(client, client.settings, "c1")
    await intake.prepare()
    raw = client.store.redis
    for fields in added:
        await raw.xadd(intake.stream, fields)  # type: ignore[arg-type]
    read: Any = await raw.xreadgroup(INTAKE_GROUP, "c1", {intake.stream: ">"}, count=len(added))
    return intake, read[0][1]


async def test_a_refusal_that_cannot_be_recorded_leaves_its_entry_pending(
    real_client: Callable[..., Client],
) -> None:
    """The rejected stream refuses the write (here a key of another type in its place; on a
    cluster, its master failing over): the refused entry must stay pending, to be reclaimed
    and refused again once it can be recorded, never acknowledged with its refusal lost. The
    accepted entry of the same batch is acknowledged only after the refusals are written."""
    client = real_client()
    await client.store.prepare()
    raw = client.store.redis
    intake, entries = await _read_added(
        client, [{"task": b"{not json"}, {"task": orjson.dumps({"input": "fine"})}]
    )
    await raw.set(intake.rejected, "in the way")
    with pytest.raises(RedisCommandError):
        await intake.admit(entries)
    summary: Any = await raw.xpending(intake.stream, INTAKE_GROUP)
    assert summary["pending"] == 2  # nothing acknowledged: both are reclaimed and settled again
    await raw.delete(intake.rejected)
    await intake.admit(entries)  # the redelivery: the accepted one is the same task
    summary = await raw.xpending(intake.stream, INTAKE_GROUP)
    assert summary["pending"] == 0
    assert [f[b"code"] for _, f in await client.store.entries(intake.rejected)] == [b"bad_json"]
    assert len(await _requested(client)) == 1


async def test_the_old_default_stream_is_never_created_and_a_foreign_key_is_left_alone(
    real_client: Callable[..., Client], caplog: pytest.LogCaptureFixture
) -> None:
    """The drain of the old default stream creates nothing while it is absent (an operator's
    DEL stays done), leaves a key of another type by that name alone with one warning, and
    admits what a stream by that name holds once there is one."""
    client = real_client(intake_reclaim_s=0.1)
    await client.store.prepare()
    raw = client.store.redis
    old = legacy_intake_key(client.settings.namespace)
    drain = asyncio.create_task(
        Intake(client, client.settings, "c-old", stream=old).background(drain=True)
    )
    try:
        await asyncio.sleep(0.3)
        assert not await raw.exists(old)
        await raw.set(old, "someone else's")
        await asyncio.sleep(0.3)
        assert await raw.get(old) == b"someone else's"
        assert caplog.text.count("not a stream") == 1
        await raw.delete(old)
        await raw.xadd(old, {"task": orjson.dumps({"input": "late"})})
        await _wait(lambda: _count(client, 1))
    finally:
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
