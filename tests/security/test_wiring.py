"""Issue 7 end to end through the engine: PII, templates, sanitising, callback checks, budgets
and live config at submit; cache, out-of-line results and restore on read in the worker path;
the ops reader's spend, alerts and signed webhooks. Real redis-server, in-process workers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import httpx
import orjson
import pytest

from engine.admission.pii_vault import PiiVault
from engine.admission.policy import set_config
from engine.client import Client
from engine.core.events import TERMINAL_EVENTS, TaskSucceeded
from engine.core.keys import ops_key, vault_key
from engine.errors import (
    BadCallbackUrl,
    BudgetExceeded,
    ConfigError,
    InvalidTask,
    MissingVariables,
    PiiBlocked,
)
from engine.operations.audit import AuditLog
from engine.operations.ops import Ops
from engine.operations.webhooks import verify_signature
from providers.types import ProgressSink, ProviderRequest, ProviderResult, Usage
from tests.conftest import TOPOLOGIES, Topology, Workers

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec-test-0123456789"


class Counting:
    """Echoes the prompt (``params.x_big``: a result that many bytes long), costs
    ``params.x_cost`` USD (default 0.01), counts its calls."""

    chains: ClassVar[dict[str, list[str]]] = {"text": ["echo"], "chat": ["echo"], "image": ["echo"]}

    def __init__(self) -> None:
        self.calls = 0

    async def process(self, request: ProviderRequest, sink: ProgressSink) -> ProviderResult:
        self.calls += 1
        text = request.prompt or request.messages[-1].content
        if request.params.get("x_big"):
            text = (text + " ") * (int(request.params["x_big"]) // (len(text) + 1) + 1)
        return ProviderResult(
            provider="echo",
            model="echo-1",
            text=text,
            usage=Usage(input_tokens=3, output_tokens=3),
            finish_reason="stop",
            cost_usd=float(request.params.get("x_cost", 0.01)),
        )

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def make(topology: Topology, workers: Workers) -> AsyncIterator[Callable[..., Client]]:
    """Clients on the standalone server (or on the cluster where a test parametrises
    ``topology``)."""
    made: list[Client] = []

    def build(**overrides: Any) -> Client:
        client = Client.from_url(topology.url, topology.settings(**overrides))
        made.append(client)
        return client

    yield build
    await workers.stop_all()
    for c in made:
        await c.aclose()


async def finish(client: Client, task_id: str) -> Any:
    async with asyncio.timeout(20):
        async for event in client.watch(task_id):
            if event.type in TERMINAL_EVENTS:
                return event
    raise AssertionError("no terminal event")


async def log_events(client: Client) -> list[dict[str, Any]]:
    from engine.core import mapper

    out = []
    for keys in client.store.partitions:
        for eid, fields in await client.store.entries(keys.log):
            out.append(mapper.envelope(eid, fields))
    return out


# --- submit path -----------------------------------------------------------------------------


async def test_pii_is_redacted_in_event_record_and_provider_and_restored_on_read(
    make: Callable[..., Client], workers: Workers
) -> None:
    """The event, the record and the provider see placeholders; ``get`` restores the values."""
    client = make()
    seen: list[str] = []

    class Spy(Counting):
        async def process(self, request: ProviderRequest, sink: ProgressSink) -> ProviderResult:
            seen.append(request.prompt)
            return await super().process(request, sink)

    workers.start(client, Spy())
    prompt = "Mail jane.doe@example.com or call 090-1234-5678 about card 4111 1111 1111 1111"
    task_id = await client.submit(prompt)
    terminal = await finish(client, task_id)
    raw = orjson.dumps(await log_events(client)).decode()
    record = await client.store.redis.hget(client.store.keys(0).task, task_id)
    for value in ("jane.doe@example.com", "090-1234-5678", "4111 1111 1111 1111"):
        assert value not in raw and value not in (record or b"").decode() and value not in seen[0]
    assert "<EMAIL_1>" in seen[0] and "<CARD_1>" in terminal.data.result.text
    view = await client.get(task_id)
    assert view.terminal is not None
    assert view.terminal.data.result.text == prompt
    assert (await client.get(task_id, for_caller=False)).terminal.data.result.text != prompt


async def test_pii_block_off_and_no_restore_policies(make: Callable[..., Client]) -> None:
    """``block`` refuses PII naming the category only; ``off`` keeps it; restore:false never
    keeps a mapping."""
    client = make(
        pii_policy='{"default": "redact", "tenants": {"b": "block", "o": "off", '
        '"n": {"mode": "redact", "restore": false}}}'
    )
    with pytest.raises(PiiBlocked, match="EMAIL") as err:
        await client.submit("write to a@b.example.org", tenant="b")
    assert "a@b.example.org" not in str(err.value)
    off_id = await client.submit("write to a@b.example.org", tenant="o")
    nr_id = await client.submit("write to a@b.example.org", tenant="n")
    rec = orjson.loads(await client.store.redis.hget(client.store.keys(0).task, off_id))
    assert rec["input"] == "write to a@b.example.org"
    assert await client.store.redis.get(vault_key(client.store.keys(0).tag, nr_id)) is None


async def test_the_restore_mapping_is_kept_in_the_vault_with_a_ttl(
    make: Callable[..., Client],
) -> None:
    """Submit writes the restore mapping under the task's hash tag with a TTL, outside the
    event, and the vault reads back the value the event does not carry."""
    client = make()
    task_id = await client.submit("write to jane.doe@example.com")
    tag = client.store.keys(0).tag
    assert await client.store.redis.ttl(vault_key(tag, task_id)) > 0
    assert await PiiVault(client.store.redis).get(tag, task_id) == {
        "<EMAIL_1>": "jane.doe@example.com"
    }


async def test_template_rendered_and_missing_variables_named(make: Callable[..., Client]) -> None:
    """A registered template renders at submit (variables not stored); missing ones are named."""
    client = make()
    v = await client.admission.templates.register("greet", "Say hello to {{name}} in {{lang}}")
    task_id = await client.submit(
        "", params={"template": "greet", "variables": {"name": "Ann", "lang": "French"}}
    )
    rec = orjson.loads(await client.store.redis.hget(client.store.keys(0).task, task_id))
    assert rec["input"] == "Say hello to Ann in French"
    assert rec["params"] == {"template": "greet", "template_version": v}
    with pytest.raises(MissingVariables, match=r"\['lang'\]"):
        await client.submit("", params={"template": "greet", "variables": {"name": "Ann"}})


async def test_requests_are_sanitised_and_bad_callback_urls_refused(
    make: Callable[..., Client],
) -> None:
    """Control and bidi characters are stripped; ftp, metadata and link-local callbacks fail."""
    client = make()
    task_id = await client.submit("he\x00llo\u202e world\x1b[2J")
    rec = orjson.loads(await client.store.redis.hget(client.store.keys(0).task, task_id))
    assert rec["input"] == "hello world[2J"
    for url in ("ftp://example.com/x", "http://169.254.169.254/latest", "http://[fe80::1]/"):
        with pytest.raises(BadCallbackUrl):
            await client.submit("x", callback_url=url)
    with pytest.raises(InvalidTask, match="empty"):
        await client.submit("\x00\x01")


async def test_budget_rejects_once_spent_and_bad_config_keeps_last_good(
    make: Callable[..., Client],
) -> None:
    """A spent daily budget refuses submits with a clear error; a budget of a wrong type is
    refused and the last good one stays in force."""
    client = make(budgets='{"tenants": {"acme": 0.05}}')
    await client.submit("ok", tenant="acme")
    await client.admission.budgets.add_spend("acme", 0.05, event_id="e1")
    with pytest.raises(BudgetExceeded, match=r"acme.*0\.05 daily budget; it resets at"):
        await client.submit("one more", tenant="acme")
    await client.submit("other tenants are not limited", tenant="beta")
    ns = client.settings.namespace
    with pytest.raises(ConfigError, match="expected a number of USD, got str"):
        await set_config(client.store.redis, ns, "budgets", '{"tenants": {"acme": "lots"}}')
    # a bad document written around the CLI is logged and ignored
    await client.store.redis.hset(f"{ns}:config", "budgets", '{"tenants": {"acme": "lots"}}')
    await client.admission.live.refresh()
    with pytest.raises(BudgetExceeded):
        await client.submit("still refused", tenant="acme")
    await set_config(client.store.redis, ns, "budgets", '{"tenants": {"acme": 10}}')
    await client.admission.live.refresh()
    await client.submit("allowed again", tenant="acme")


# --- worker path -----------------------------------------------------------------------------


async def test_cache_hit_is_cached_with_cost_zero_and_opt_out_calls_again(
    make: Callable[..., Client], workers: Workers
) -> None:
    """An identical request is answered from the cache (cached, cost 0, no provider call);
    ``cache: false`` calls the provider; with the cache off nothing is cached."""
    client = make(cache=True)
    provider = Counting()
    workers.start(client, provider)
    first = await finish(client, await client.submit("the same  question"))
    second = await finish(client, await client.submit("the same question"))
    assert isinstance(second, TaskSucceeded) and second.data.cached
    assert second.data.cost_usd == 0 and not first.data.cached
    assert provider.calls == 1
    third = await finish(client, await client.submit("the same question", params={"cache": False}))
    assert not third.data.cached and provider.calls == 2


async def test_large_result_is_stored_out_of_line_and_loaded_on_read(
    make: Callable[..., Client], workers: Workers
) -> None:
    """A result over the offload size leaves the event small; ``get`` loads the text."""
    client = make(result_offload_bytes=1024)
    workers.start(client, Counting())
    task_id = await client.submit("abc", params={"x_big": 5000})
    event = await finish(client, task_id)
    assert event.data.result.text is None and event.data.result.ref.size > 5000
    view = await client.get(task_id)
    assert view.terminal.data.result.text.startswith("abc abc")


# --- ops reader: spend, alerts, webhooks -------------------------------------------------------


async def ops_events(client: Client) -> list[dict[str, Any]]:
    from engine.core import mapper

    rows = await client.store.entries(ops_key(client.settings.namespace))
    return [mapper.envelope(eid, f) for eid, f in rows]


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_ops_counts_spend_once_and_budget_then_rejects(
    make: Callable[..., Client], workers: Workers
) -> None:
    """Succeeded costs reach the tenant's spend exactly once, even when the log is re-read."""
    client = make(budgets='{"tenants": {"acme": 0.025}}')
    workers.start(client, Counting())
    ops = Ops(client)
    await ops.load()
    for _ in range(3):  # each settled before the next: its reservation is given back
        await finish(client, await client.submit("x", tenant="acme", params={"x_cost": 0.01}))
        while await ops.step():
            pass
    ops.cursors = dict.fromkeys(ops.cursors, "0-0")  # as after a lost checkpoint
    while await ops.step():
        pass
    await ops.aclose()
    assert await client.admission.budgets.spent("acme") == pytest.approx(0.03)
    with pytest.raises(BudgetExceeded):
        await client.submit("y", tenant="acme")


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_every_alert_fires_and_resolves(make: Callable[..., Client]) -> None:
    """Backlog, provider error rate, cost over budget and breaker alerts are raised and
    resolved as events in the ops stream."""
    client = make(
        alert_backlog=2,
        alert_backlog_s=0,
        alert_error_min_calls=2,
        alert_error_rate_pct=40,
        alert_error_clear_pct=30,
        budgets='{"tenants": {"acme": 0.01}}',
    )
    await client.store.prepare()
    ops = Ops(client)
    await ops.load()
    # at least 3 in one partition's queue, however the ids spread over partitions
    ids = [await client.submit(f"q{i}") for i in range(3 * client.settings.partitions)]
    await ops.tick()
    for i in ids:
        await client.cancel(i)
    await ops.tick()
    from engine.operations.alerts import BreakerChanged, ProviderCall, Spend

    t = 1_700_000_000_000
    await ops._emit(
        ops.alerts.observe_all(
            [ProviderCall(t, "gemini", False), ProviderCall(t, "gemini", False)]
            + [ProviderCall(t + 1, "gemini", True)] * 6
            + [Spend(t, "acme", 0.02), BreakerChanged(t, "openai", "opened")]
            + [BreakerChanged(t + 5, "openai", "closed")]
        )
    )
    from engine.operations.alerts import Tick

    await ops._emit(ops.alerts.observe(Tick(t + 86_400_000)))
    await ops.aclose()
    got = {(e["type"], e["data"]["rule"]) for e in await ops_events(client)}
    for rule in ("queue_backlog", "provider_error_rate", "cost_over_budget", "circuit_open"):
        assert ("AlertRaised", rule) in got and ("AlertResolved", rule) in got, rule


@pytest.mark.parametrize(*TOPOLOGIES, indirect=True)
async def test_webhook_signed_retried_after_500_and_recorded(
    make: Callable[..., Client], workers: Workers
) -> None:
    """The receiver verifies the HMAC signature; a 500 is retried; each attempt is a
    WebhookAttempted event; the PII placeholders are restored for the caller."""
    got: list[tuple[int, bool, dict[str, Any]]] = []

    def receive(request: httpx.Request) -> httpx.Response:
        ok = verify_signature(SECRET, request.headers["X-AIIS-Signature"], request.content)
        got.append((len(got), ok, orjson.loads(request.content)))
        return httpx.Response(500 if len(got) == 1 else 204)

    client = make(webhook_secret=SECRET, webhook_base_delay_s=0.01)
    workers.start(client, Counting())

    async def no_dns(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    http = httpx.AsyncClient(transport=httpx.MockTransport(receive))
    ops = Ops(client, http=http, resolve=no_dns)
    task_id = await client.submit(
        "mail me at x@example.com", callback_url="https://hooks.example/t?k=1"
    )
    await finish(client, task_id)
    await ops.load()
    async with asyncio.timeout(10):
        while len(got) < 2 or (ops.deliveries is not None and ops.deliveries.busy):
            await ops.step(block_ms=50)
    await ops.aclose()
    await http.aclose()
    assert [ok for _, ok, _ in got] == [True, True]
    body = got[-1][2]["event"]
    assert body["task_id"] == task_id
    assert body["data"]["result"]["text"] == "mail me at x@example.com"
    attempts = [e for e in await ops_events(client) if e["type"] == "WebhookAttempted"]
    assert [a["data"]["outcome"] for a in attempts] == ["retrying", "delivered"]
    assert all(a["data"]["url"] == "https://hooks.example/t" for a in attempts)
    callbacks = client.store.keys(client._partition(task_id)).callbacks
    assert await client.store.redis.hlen(callbacks) == 0


async def test_cli_style_audit_never_holds_secrets_or_pii(make: Callable[..., Client]) -> None:
    """Audit records scrub PII and key-shaped strings from what they are given."""
    client = make()
    log = AuditLog(client.store.redis, client.settings.namespace)
    note = "from bob@example.com sk-" + "a" * 24
    await log.record("submit", tenant="acme", token_id="t:abc", detail={"note": note})
    stored = (await log.read())[-1].model_dump_json()
    assert "bob@example.com" not in stored and "aaaaaaaa" not in stored
