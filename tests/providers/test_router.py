"""The router: fallback order, what does and does not fall back, pinning, notices, cost."""

from __future__ import annotations

import logging

import pytest

from providers.config import ProviderSettings
from providers.errors import AuthFailed, InvalidRequest, NetworkError, Overloaded, RateLimited
from providers.factory import build_router
from providers.router import Router
from providers.sandbox import Sandbox, reply_text
from providers.types import ProviderRequest
from tests.providers.conftest import RecordingSink, make_settings


def request(prompt: str, kind: str = "text", **params: object) -> ProviderRequest:
    return ProviderRequest("task-9", "tenant-a", kind, prompt=prompt, params=params)  # type: ignore[arg-type]


def attempts(sink: RecordingSink) -> list[str]:
    return [d["provider"] for k, d in sink.notices if k == "attempt"]


async def test_first_choice_serves_when_healthy(router: Router, sink: RecordingSink) -> None:
    """Text goes to Gemini first; one attempt notice, no fallback."""
    result = await router.process(request("hello"), sink)
    assert result.provider == "gemini"
    assert attempts(sink) == ["gemini"]
    assert "fallback" not in sink.kinds()


async def test_fallback_order_text(router: Router, sink: RecordingSink) -> None:
    """Gemini fails → OpenAI fails → Anthropic serves; each step reported."""
    prompt = "hi [[fault:rate_limit@gemini]] [[fault:unavailable@openai]]"
    result = await router.process(request(prompt), sink)
    assert result.provider == "anthropic"
    assert result.text == reply_text(prompt)
    assert attempts(sink) == ["gemini", "openai", "anthropic"]
    fallbacks = [d for k, d in sink.notices if k == "fallback"]
    assert [(f["from"], f["to"], f["error_class"]) for f in fallbacks] == [
        ("gemini", "openai", "RateLimited"),
        ("openai", "anthropic", "Overloaded"),
    ]


async def test_fallback_order_image(router: Router, sink: RecordingSink) -> None:
    """Images: Unsplash first, Pexels when Unsplash fails."""
    result = await router.process(
        request("mountains [[fault:server_error@unsplash]]", "image"), sink
    )
    assert result.provider == "pexels" and result.images
    assert attempts(sink) == ["unsplash", "pexels"]


async def test_invalid_request_never_falls_back(router: Router, sink: RecordingSink) -> None:
    """InvalidRequest is raised at once; the next provider is not tried."""
    with pytest.raises(InvalidRequest):
        await router.process(request("x [[fault:invalid@gemini]]"), sink)
    assert attempts(sink) == ["gemini"]


async def test_auth_failure_falls_back(router: Router, sink: RecordingSink) -> None:
    """A rejected key on one provider does not stop the task: the next account serves it."""
    result = await router.process(request("x [[fault:bad_key@gemini]]"), sink)
    assert result.provider == "openai"


async def test_all_fail_raises_last_retryable(router: Router, sink: RecordingSink) -> None:
    """Every provider failing raises the last retryable error for the engine to retry."""
    prompt = "x [[fault:bad_key@gemini]] [[fault:rate_limit@openai]] [[fault:cut@anthropic]]"
    with pytest.raises(NetworkError) as info:
        await router.process(request(prompt), sink)
    assert info.value.provider == "anthropic"
    assert attempts(sink) == ["gemini", "openai", "anthropic"]


async def test_all_retryable_with_waits_uses_shortest(router: Router, sink: RecordingSink) -> None:
    """When every failure says how long to wait, the raised error carries the shortest wait."""
    with pytest.raises(RateLimited) as info:
        await router.process(request("x [[fault:rate_limit]]"), sink)
    assert info.value.retry_after == pytest.approx(2.0, abs=0.01)


async def test_all_fatal_raises_fatal(router: Router, sink: RecordingSink) -> None:
    """With no retryable failure the last fatal one is raised."""
    with pytest.raises(AuthFailed):
        await router.process(request("x [[fault:bad_key]]"), sink)


async def test_stream_cut_midway_discards_partial(router: Router, sink: RecordingSink) -> None:
    """A stream failing mid-way falls back and tells the subscriber its deltas are discarded."""
    result = await router.process(request("tell me more [[fault:cut@gemini]]"), sink)
    assert result.provider == "openai"
    kinds = sink.kinds()
    assert kinds.index("partial_discarded") < kinds.index("fallback")
    discarded = dict(sink.notices)["partial_discarded"]
    assert discarded["provider"] == "gemini" and discarded["deltas"] >= 1
    # the final answer is the tail of the delta stream
    assert "".join(sink.deltas).endswith(result.text or "")


async def test_pin_provider_and_model(router: Router, sink: RecordingSink) -> None:
    """params provider/model pin the call; a pinned provider does not fall back."""
    result = await router.process(
        request("hi", provider="anthropic", model="claude-haiku-4-5"), sink
    )
    assert (result.provider, result.model) == ("anthropic", "claude-haiku-4-5")
    with pytest.raises(RateLimited):
        await router.process(request("hi [[fault:rate_limit]]", provider="openai"), RecordingSink())


async def test_model_alone_implies_provider(router: Router, sink: RecordingSink) -> None:
    """A model name without a provider is routed to the provider that serves it."""
    result = await router.process(request("hi", model="gpt-5"), sink)
    assert (result.provider, result.model) == ("openai", "gpt-5")
    with pytest.raises(InvalidRequest):
        await router.process(request("hi", model="mystery-1"), sink)


async def test_providers_without_key_are_skipped(sandbox: Sandbox, sink: RecordingSink) -> None:
    """Only providers with a key are in the chain."""
    settings = make_settings(sandbox.url).model_copy(update={"gemini_api_key": None})
    router = build_router(None, settings)
    try:
        result = await router.process(request("hi"), sink)
        assert result.provider == "openai"
        assert attempts(sink) == ["openai"]
        with pytest.raises(InvalidRequest):
            await router.process(request("hi", provider="gemini"), sink)
    finally:
        await router.aclose()


async def test_configured_chain_order(sandbox: Sandbox, sink: RecordingSink) -> None:
    """AIIS_TEXT_CHAIN reorders the chain."""
    settings = make_settings(sandbox.url, AIIS_TEXT_CHAIN="anthropic,gemini")
    router = build_router(None, settings)
    try:
        await router.process(request("hi [[fault:overloaded@anthropic]]"), sink)
        assert attempts(sink) == ["anthropic", "gemini"]
    finally:
        await router.aclose()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize(
    ("provider", "model", "usd_per_m"),
    [
        ("gemini", "gemini-2.5-flash", (0.30, 2.50, 0.075)),
        ("openai", "gpt-5-mini", (0.25, 2.00, 0.025)),
        ("anthropic", "claude-sonnet-4-5", (3.00, 15.00, 0.30)),
    ],
)
async def test_cost_from_reported_usage(
    router: Router,
    provider: str,
    model: str,
    usd_per_m: tuple[float, float, float],
    stream: bool,
) -> None:
    """Cost = uncached input + cached input + output at the table's prices, streamed or not."""
    result = await router.process(
        request("price this answer please [[cached:4]]", provider=provider, stream=stream),
        RecordingSink(),
    )
    u = result.usage
    assert u.cached_tokens == 4
    inp, out, cached = usd_per_m
    expected = ((u.input_tokens - 4) * inp + 4 * cached + u.output_tokens * out) / 1e6
    assert result.cost_usd == pytest.approx(expected, rel=1e-9)
    assert result.cost_usd > 0


async def test_image_cost_is_zero_not_unknown(router: Router) -> None:
    """Image search is priced (at 0 per request), not unknown."""
    result = await router.process(request("dogs", "image"), RecordingSink())
    assert result.cost_usd == 0.0


async def test_unknown_model_cost_is_none_with_warning(
    router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    """An unpriced model yields cost None and a warning, never a silent 0."""
    with caplog.at_level(logging.WARNING, logger="providers.pricing"):
        result = await router.process(
            request("hi", provider="gemini", model="gemini-9-ultra"), RecordingSink()
        )
    assert result.cost_usd is None
    assert any("gemini-9-ultra" in r.getMessage() for r in caplog.records)


def test_chain_settings_validate() -> None:
    """A chain naming an unknown or wrong-kind provider is rejected at startup."""
    with pytest.raises(ValueError):
        ProviderSettings(AIIS_TEXT_CHAIN="gemini,unsplash")
    assert ProviderSettings(AIIS_IMAGE_CHAIN="pexels").image_chain == ("pexels",)


async def test_overloaded_everywhere_is_retryable(router: Router) -> None:
    """All providers overloaded: the task fails retryably (Overloaded), not fatally."""
    with pytest.raises(Overloaded) as info:
        await router.process(request("x [[fault:overloaded]]"), RecordingSink())
    assert info.value.retryable


async def test_random_faults_are_seeded_and_survivable() -> None:
    """Seeded 30 % random faults: same faults per seed; every task ends in result or error."""
    from providers.errors import ProviderError
    from providers.sandbox import start_sandbox

    injected = []
    for _ in range(2):
        async with start_sandbox(fault_rate=0.3, seed=7, hang_s=2) as sandbox:
            router = build_router(None, make_settings(sandbox.url))
            outcomes: list[str] = []
            try:
                for i in range(20):
                    try:
                        result = await router.process(request(f"task {i}"), RecordingSink())
                        outcomes.append(result.provider)
                    except ProviderError as exc:
                        outcomes.append(exc.error_class)
            finally:
                await router.aclose()
            injected.append(sandbox.stats()["faults_injected"])
    assert injected[0] == injected[1] and sum(injected[0].values()) > 0
    assert len(outcomes) == 20
