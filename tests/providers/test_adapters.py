"""Each adapter against the sandbox over real HTTP: success, streaming, and every fault class."""

from __future__ import annotations

import pytest

from providers.adapters.base import HttpAdapter
from providers.errors import (
    AuthFailed,
    InsufficientCredits,
    InvalidRequest,
    NetworkError,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
)
from providers.factory import build_router
from providers.router import Router
from providers.sandbox import Sandbox, reply_text
from providers.types import ChatMessage, ProviderRequest
from tests.providers.conftest import RecordingSink, make_settings

TEXT = ("gemini", "openai", "anthropic")
IMAGES = ("unsplash", "pexels")


def text_request(prompt: str, stream: bool = True, **params: object) -> ProviderRequest:
    return ProviderRequest(
        "task-1", "tenant-a", "text", prompt=prompt, params={"stream": stream, **params}
    )


def adapter(router: Router, name: str) -> HttpAdapter:
    found = router.adapters[name]
    found = getattr(found, "inner", found)  # unwrap the keyring's RotatingAdapter
    assert isinstance(found, HttpAdapter)
    return found


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("provider", TEXT)
async def test_text_success(router: Router, sandbox: Sandbox, provider: str, stream: bool) -> None:
    """Text calls return answer, usage, finish reason over HTTP/2; stream deltas add up."""
    sink = RecordingSink()
    prompt = "Write a haiku about the sea [[cached:2]] [[reasoning:3]]"
    a = adapter(router, provider)
    reply = await a.call(text_request(prompt, stream), a.default_model, sink)
    result = reply.result
    assert result.text == reply_text(prompt)
    assert result.provider == provider
    assert result.finish_reason == "stop"
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    assert result.usage.cached_tokens == 2
    if provider != "anthropic":  # Anthropic reports no separate reasoning tokens
        assert result.usage.reasoning_tokens == 3
    if stream:
        assert len(sink.deltas) > 1 and "".join(sink.deltas) == result.text
    else:
        assert sink.deltas == []
    assert sandbox.stats()["http_versions"] == {"HTTP/2": 1}


@pytest.mark.parametrize("provider", TEXT)
async def test_chat_maps_system_and_turns(router: Router, provider: str) -> None:
    """Chat requests carry the system prompt and turns; the answer follows the last user turn."""
    request = ProviderRequest(
        "t",
        "a",
        "chat",
        messages=[
            ChatMessage("system", "You are terse."),
            ChatMessage("user", "first question"),
            ChatMessage("assistant", "first answer"),
            ChatMessage("user", "second question"),
        ],
    )
    a = adapter(router, provider)
    reply = await a.call(request, a.default_model, RecordingSink())
    assert reply.result.text == reply_text("second question")


@pytest.mark.parametrize("provider", IMAGES)
async def test_image_search(router: Router, provider: str) -> None:
    """Image search returns Image records with URL, size and author."""
    request = ProviderRequest("t", "a", "image", prompt="red fox in snow", params={"count": 3})
    a = adapter(router, provider)
    reply = await a.call(request, a.default_model, RecordingSink())
    images = reply.result.images
    assert len(images) == 3
    assert all(i.url.startswith("https://") and i.width and i.author for i in images)
    assert "red fox in snow" in (images[0].description or "")


TEXT_FAULTS: dict[str, type[ProviderError]] = {
    "rate_limit": RateLimited,
    "unavailable": Overloaded,
    "overloaded": Overloaded,
    "server_error": Overloaded,
    "timeout": ProviderTimeout,
    "reset": NetworkError,
    "cut": NetworkError,
    "malformed": NetworkError,
    "credits": InsufficientCredits,
    "spend_limit": InsufficientCredits,
    "billing": InsufficientCredits,
    "bad_key": AuthFailed,
    "invalid": InvalidRequest,
}
STREAM_ONLY = {"stall": ProviderTimeout}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("fault", sorted({**TEXT_FAULTS, **STREAM_ONLY}))
@pytest.mark.parametrize("provider", TEXT)
async def test_text_faults(router: Router, provider: str, fault: str, stream: bool) -> None:
    """Each fault raises its taxonomy class (chained), never truncated success or httpx."""
    expected = {**TEXT_FAULTS, **STREAM_ONLY}[fault]
    if fault == "stall" and not stream:
        expected = ProviderTimeout  # the body never completes: the call timeout fires
    a = adapter(router, provider)
    with pytest.raises(expected) as info:
        await a.call(
            text_request(f"hello [[fault:{fault}]]", stream), a.default_model, RecordingSink()
        )
    assert info.value.provider == provider
    assert type(info.value).__module__ == "providers.errors"
    if fault == "rate_limit":
        assert info.value.retry_after == pytest.approx(2.0, abs=0.01)
    if fault in ("reset", "cut", "malformed", "timeout"):
        assert info.value.__cause__ is not None


@pytest.mark.parametrize("provider", TEXT)
async def test_midstream_error_event_raises(router: Router, provider: str) -> None:
    """An error event inside a started stream raises (after partial deltas), never succeeds."""
    sink = RecordingSink()
    a = adapter(router, provider)
    with pytest.raises((NetworkError, Overloaded)):
        await a.call(text_request("hi there [[fault:midstream_error]]"), a.default_model, sink)
    assert sink.deltas  # the failure came mid-way


IMAGE_FAULTS: dict[str, type[ProviderError]] = {
    "rate_limit": RateLimited,
    "unavailable": Overloaded,
    "server_error": Overloaded,
    "timeout": ProviderTimeout,
    "reset": NetworkError,
    "cut": NetworkError,
    "malformed": NetworkError,
    "credits": InsufficientCredits,
    "bad_key": AuthFailed,
}


@pytest.mark.parametrize("fault", sorted(IMAGE_FAULTS))
@pytest.mark.parametrize("provider", IMAGES)
async def test_image_faults(router: Router, provider: str, fault: str) -> None:
    """Image providers map their own error shapes (Unsplash's 403 rate limit included)."""
    a = adapter(router, provider)
    request = ProviderRequest("t", "a", "image", prompt=f"cats [[fault:{fault}]]")
    with pytest.raises(IMAGE_FAULTS[fault]) as info:
        await a.call(request, a.default_model, RecordingSink())
    if fault == "rate_limit":
        assert info.value.retry_after is not None and info.value.retry_after > 0


async def test_empty_image_query_is_invalid(router: Router) -> None:
    """An image task without a query is an InvalidRequest before any HTTP."""
    a = adapter(router, "unsplash")
    with pytest.raises(InvalidRequest):
        await a.call(ProviderRequest("t", "a", "image", prompt="  "), "x", RecordingSink())


@pytest.mark.parametrize("provider", TEXT)
async def test_remaining_zero_reports_exhaustion(router: Router, provider: str) -> None:
    """A success whose headers say the budget is spent reports when it comes back."""
    a = adapter(router, provider)
    reply = await a.call(text_request("hi [[fault:remaining0]]"), a.default_model, RecordingSink())
    if provider == "gemini":
        assert reply.exhausted_until is None  # Gemini sends no rate-limit headers
    else:
        assert reply.exhausted_until is not None


@pytest.mark.parametrize("fault", ["none", "cut", "reset"])
@pytest.mark.parametrize("provider", TEXT)
async def test_http11_path(sandbox: Sandbox, provider: str, fault: str) -> None:
    """Without HTTP/2 prior knowledge the adapters speak HTTP/1.1, with the same results."""
    settings = make_settings(sandbox.url).model_copy(update={"http2_prior_knowledge": False})
    router = build_router(None, settings)
    try:
        a = adapter(router, provider)
        prompt = "plain http" + ("" if fault == "none" else f" [[fault:{fault}]]")
        if fault == "none":
            reply = await a.call(text_request(prompt), a.default_model, RecordingSink())
            assert reply.result.text == reply_text(prompt)
        else:
            with pytest.raises(NetworkError):
                await a.call(text_request(prompt), a.default_model, RecordingSink())
    finally:
        await router.aclose()
    assert set(sandbox.stats()["http_versions"]) == {"HTTP/1.1"}


async def test_deadline_in_the_past_times_out_without_http(
    router: Router, sandbox: Sandbox
) -> None:
    """A task whose deadline has passed fails as ProviderTimeout without calling out."""
    import time

    request = ProviderRequest("t", "a", "text", prompt="late", deadline=time.time() - 1)
    a = adapter(router, "gemini")
    with pytest.raises(ProviderTimeout):
        await a.call(request, a.default_model, RecordingSink())
    assert sandbox.stats()["requests"] == {}


async def test_connection_refused_is_network_error(sandbox: Sandbox) -> None:
    """Nothing listening: NetworkError, not an httpx exception."""
    settings = make_settings("http://127.0.0.1:9")
    router = build_router(None, settings)
    try:
        a = adapter(router, "openai")
        with pytest.raises(NetworkError):
            await a.call(text_request("x"), a.default_model, RecordingSink())
    finally:
        await router.aclose()
