"""The exact requests each adapter sends (captured through the ``transport=`` seam), and
settings read from the environment."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from providers.adapters.base import HttpAdapter
from providers.config import ProviderSettings
from providers.errors import NetworkError
from providers.factory import build_router
from providers.types import ChatMessage, ProviderRequest
from tests.providers.conftest import SECRET_KEYS, RecordingSink, make_settings

CHAT = ProviderRequest(
    "t",
    "a",
    "chat",
    params={"stream": False, "max_tokens": 77},
    messages=[
        ChatMessage("system", "Be terse."),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello"),
        ChatMessage("user", "Bye"),
    ],
)
ANSWERS: dict[str, Any] = {
    "gemini": {
        "candidates": [{"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1},
    },
    "openai": {
        "model": "gpt-5-mini",
        "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    },
    "anthropic": {
        "type": "message",
        "model": "claude-sonnet-4-5",
        "stop_reason": "end_turn",
        "content": [{"type": "text", "text": "ok"}],
        "usage": {"input_tokens": 3, "output_tokens": 1},
    },
}


async def capture(provider: str, request: ProviderRequest) -> httpx.Request:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=ANSWERS[provider])

    router = build_router(
        None, make_settings("https://api.example.test"), transport=httpx.MockTransport(handler)
    )
    try:
        adapter = getattr(router.adapters[provider], "inner", router.adapters[provider])
        assert isinstance(adapter, HttpAdapter)
        reply = await adapter.call(request, adapter.default_model, RecordingSink())
        assert reply.result.text == "ok"
    finally:
        await router.aclose()
    return seen[0]


@pytest.mark.parametrize("provider", ["gemini", "openai", "anthropic"])
async def test_each_header_is_sent_once(provider: str) -> None:
    """The adapter's headers replace the client's defaults of the same name (an OpenAI call
    must not carry both ``accept: */*`` and ``accept: application/json``)."""
    req = await capture(provider, CHAT)
    names = [name.lower() for name, _ in req.headers.multi_items()]
    assert len(names) == len(set(names)), names


async def test_gemini_request_shape() -> None:
    """Gemini: generateContent path, x-goog-api-key, systemInstruction, model role, config."""
    req = await capture("gemini", CHAT)
    body = orjson.loads(req.content)
    assert req.url.path == "/gemini/v1beta/models/gemini-2.5-flash:generateContent"
    assert req.headers["x-goog-api-key"] == SECRET_KEYS["gemini"]
    assert body["systemInstruction"] == {"parts": [{"text": "Be terse."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["generationConfig"]["maxOutputTokens"] == 77


async def test_openai_request_shape() -> None:
    """OpenAI: /v1/chat/completions, bearer key, system message first, max_completion_tokens."""
    req = await capture("openai", CHAT)
    body = orjson.loads(req.content)
    assert req.url.path == "/openai/v1/chat/completions"
    assert req.headers["authorization"] == f"Bearer {SECRET_KEYS['openai']}"
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["max_completion_tokens"] == 77 and "stream" not in body


async def test_openai_stream_asks_for_usage() -> None:
    """OpenAI streams ask for the usage chunk (stream_options.include_usage)."""

    def handler(req: httpx.Request) -> httpx.Response:
        body = orjson.loads(req.content)
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        return httpx.Response(
            200, text="data: [DONE]\n\n", headers={"content-type": "text/event-stream"}
        )

    router = build_router(
        None, make_settings("https://api.example.test"), transport=httpx.MockTransport(handler)
    )
    try:
        adapter = router.adapters["openai"]
        with pytest.raises(NetworkError, match="before completion"):
            await adapter.call(
                ProviderRequest("t", "a", "text", prompt="x"), "gpt-5", RecordingSink()
            )
    finally:
        await router.aclose()


async def test_anthropic_request_shape() -> None:
    """Anthropic: /v1/messages, x-api-key, anthropic-version, top-level system, max_tokens."""
    req = await capture("anthropic", CHAT)
    body = orjson.loads(req.content)
    assert req.url.path == "/anthropic/v1/messages"
    assert req.headers["x-api-key"] == SECRET_KEYS["anthropic"]
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert body["system"] == "Be terse."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["max_tokens"] == 77


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys, base-URL overrides, chains and limits come from the environment."""
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-env-0000")
    monkeypatch.setenv("AIIS_OPENAI_BASE_URL", "http://127.0.0.1:9999/v1/")
    monkeypatch.setenv("AIIS_TEXT_CHAIN", "openai, anthropic")
    monkeypatch.setenv("AIIS_ANTHROPIC_RPM", "7")
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    settings = ProviderSettings()
    openai = settings.provider("openai")
    assert openai.api_key is not None and openai.api_key.get_secret_value() == "test-key-env-0000"
    assert openai.base_url == "http://127.0.0.1:9999/v1"
    assert settings.text_chain == ("openai", "anthropic")
    assert settings.provider("anthropic").rpm == 7
    assert settings.provider("gemini").api_key is None
    assert "test-key-env-0000" not in repr(settings)


async def test_openai_compatible_base_url_with_v1() -> None:
    """An OpenAI-style base URL ending in /v1 is not doubled."""
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.path)
        return httpx.Response(200, json=ANSWERS["openai"])

    settings = make_settings("https://x.test").model_copy(
        update={"openai_base_url": "https://proxy.test/v1"}
    )
    router = build_router(None, settings, transport=httpx.MockTransport(handler))
    try:
        adapter = router.adapters["openai"]
        await adapter.call(CHAT, "gpt-5", RecordingSink())
    finally:
        await router.aclose()
    assert seen == ["/v1/chat/completions"]
