"""Issue 15 item 3: every free-text field that is sent or stored is screened (not only the
input), the idempotency key is stored hashed, and the detector's known misses are closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from engine.admission.pii import Category, detect
from engine.admission.redaction import PiiBlocked
from engine.client import Client
from engine.core.events import TERMINAL_EVENTS
from providers.config import ProviderSettings
from providers.factory import build_processor
from providers.sandbox.app import SandboxApp
from providers.sandbox.server import HttpServer, Request, Response
from tests.conftest import Workers, fast_settings

pytestmark = pytest.mark.timeout(60)

EMAIL, PHONE = "hanako.yamada@example.co.jp", "090-1234-5678"


@pytest.mark.parametrize(
    ("text", "value", "category"),
    [
        ("call +81 (0)90-1234-5678 today", "+81 (0)90-1234-5678", Category.PHONE),
        ("call 090.1234.5678 today", "090.1234.5678", Category.PHONE),
        ("office (03) 1234-5678 ext", "(03) 1234-5678", Category.PHONE),
        ("office (03)1234-5678 ext", "(03)1234-5678", Category.PHONE),
        ("TEL090-1234-5678", "090-1234-5678", Category.PHONE),
        ("mail taro＠example.com now", "taro＠example.com", Category.EMAIL),
        ("mail jörg@bücher.de now", "jörg@bücher.de", Category.EMAIL),
        ("連絡先 taro@例え.jp まで", "taro@例え.jp", Category.EMAIL),
        ("pay de89 3704 0044 0532 0130 00 today", "de89 3704 0044 0532 0130 00", Category.IBAN),
        ("pay gb82west12345698765432 today", "gb82west12345698765432", Category.IBAN),
        ("card 213116194157357 ok", "213116194157357", Category.CARD),  # 15-digit JCB
    ],
)
def test_detection_misses_are_closed(text: str, value: str, category: Category) -> None:
    """Each form the adversarial run slipped past the detector is now found, exactly."""
    assert [(s.value, s.category) for s in detect(text)] == [(value, category)]


def test_near_misses_stay_clean() -> None:
    """Look-alikes of the new forms are not PII: versions, bad IBANs, a bare TEL word."""
    for text in ("version 1.2345.6789", "de89 3704 0044 0532 0130 01", "TEL desk", "(03) 12"):
        assert detect(text) == [], text


class Recorder:
    """The sandbox app, remembering every request body a provider received."""

    def __init__(self) -> None:
        self.app = SandboxApp()
        self.bodies: list[bytes] = []

    async def __call__(self, request: Request) -> Response:
        self.bodies.append(request.body)
        return await self.app(request)


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[str, Recorder]]:
    recorder = Recorder()
    server = HttpServer(recorder, "127.0.0.1", 0)  # type: ignore[arg-type]
    await server.start()
    yield f"http://127.0.0.1:{server.port}", recorder
    await server.stop()


async def _finish(client: Client, task_id: str) -> Any:
    async with asyncio.timeout(30):
        async for event in client.watch(task_id):
            if event.type in TERMINAL_EVENTS:
                return event
    raise AssertionError("no terminal event")


async def _log(client: Client) -> str:
    rows = [
        (eid.decode(), {k.decode(): v.decode() for k, v in f.items()})
        for keys in client.store.partitions
        for eid, f in await client.store.entries(keys.log)
    ]
    return orjson.dumps(rows).decode()


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
async def test_pii_in_params_is_redacted_in_log_record_and_provider_body(
    redis_url: str, workers: Workers, sandbox: tuple[str, Recorder], provider: str
) -> None:
    """An e-mail and a phone in ``params.system``, ``stop`` and an ``x_`` param reach neither
    the event log, the task record nor the provider (the real router and sandbox)."""
    url, recorder = sandbox
    client = Client.from_url(redis_url, fast_settings(redis_url=redis_url))
    router = build_processor(None, ProviderSettings(), sandbox_url=url)
    workers.start(client, router)
    try:
        params = {
            "provider": provider,
            "system": f"You write to {EMAIL}, phone {PHONE}.",
            "stop": [f"END {PHONE}"],
            "x_note": {"owner": EMAIL},
        }
        task_id = await client.submit("say hello", params=params)
        event = await _finish(client, task_id)
        assert event.type == "TaskSucceeded", event
        record = (await client.store.redis.hget(client.store.keys(0).task, task_id)).decode()
        log = await _log(client)
        sent = b"".join(recorder.bodies).decode()
        assert provider in sent or "messages" in sent or "contents" in sent
        for stored in (record, log, sent):
            assert EMAIL not in stored and PHONE not in stored
            assert "<EMAIL_1>" in stored and "<PHONE_1>" in stored
    finally:
        await workers.stop_all()
        await router.aclose()
        await client.aclose()


async def test_block_policy_refuses_pii_in_params_naming_the_field(
    make_client: Callable[..., Client],
) -> None:
    """Under ``block``, PII in ``params.system`` is refused like PII in the input."""
    client = make_client(pii_policy="block")
    with pytest.raises(PiiBlocked) as err:
        await client.submit("hello", params={"system": f"mail {EMAIL}"})
    assert err.value.field == "params.system" and EMAIL not in str(err.value)


async def test_idempotency_key_is_stored_hashed_and_still_deduplicates(
    make_client: Callable[..., Client],
) -> None:
    """A key holding an e-mail is stored nowhere in clear, yet a repeat returns the same task;
    the same key of another tenant is another task."""
    client = make_client()
    key = f"order-{EMAIL}"
    first = await client.submit("hello", idempotency_key=key)
    assert await client.submit("hello", idempotency_key=key) == first
    assert await client.submit("hello", idempotency_key=key, tenant="other") != first
    dump: list[bytes] = []
    for name in await client.store.redis.keys(f"{client.settings.namespace}*"):
        kind = (await client.store.redis.type(name)).decode()
        if kind == "hash":
            dump.append(
                orjson.dumps(
                    {
                        k.decode(): v.decode()
                        for k, v in (await client.store.redis.hgetall(name)).items()
                    }
                )
            )
        elif kind == "stream":
            dump.extend(
                orjson.dumps({k.decode(): v.decode() for k, v in f.items()})
                for _, f in await client.store.redis.xrange(name)
            )
    assert dump and not any(EMAIL.encode() in d or b"order-" in d for d in dump)
