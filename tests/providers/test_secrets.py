"""Keys never leave: not in settings reprs, errors, notices or log lines, even when a provider
echoes the key back in its error body (the sandbox does, on purpose)."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from providers.config import ProviderSettings
from providers.credentials.scrub import Scrubber
from providers.errors import ProviderError
from providers.factory import build_processor, build_router
from providers.sandbox import Sandbox, start_sandbox
from providers.types import ProviderRequest
from tests.providers.conftest import KEY_FIELDS, SECRET_KEYS, RecordingSink, make_settings


def leaks(text: str) -> list[str]:
    return [k for k in SECRET_KEYS.values() if k in text]


def test_settings_repr_hides_keys() -> None:
    """repr/str/model_dump_json of the settings never show a key."""
    settings = ProviderSettings(
        **{"GEMINI_API_KEY": SECRET_KEYS["gemini"], "OPENAI_API_KEY": SECRET_KEYS["openai"]}
    )
    assert settings.provider("gemini").api_key is not None
    for text in (
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        repr(settings.provider("gemini")),
    ):
        assert leaks(text) == []


@pytest.mark.parametrize("kind", ["text", "image"])
async def test_bad_keys_never_leak(
    kind: str, caplog: pytest.LogCaptureFixture, fake_redis: aioredis.Redis
) -> None:
    """Every provider rejects its key and echoes it; errors, notices and logs stay clean."""
    async with start_sandbox(bad_keys=SECRET_KEYS.values()) as sandbox:
        router = build_router(fake_redis, make_settings(sandbox.url))
        sink = RecordingSink()
        try:
            with caplog.at_level(logging.DEBUG), pytest.raises(ProviderError) as info:
                await router.process(ProviderRequest("t", "a", kind, prompt="cats"), sink)  # type: ignore[arg-type]
        finally:
            await router.aclose()
    # a first rejection only makes the key suspect: retried, not yet AuthFailed
    assert info.value.error_class == "KeyRejected"
    assert len([k for k, _ in sink.notices if k == "attempt"]) >= 2
    texts = [str(info.value), repr(info.value), repr(sink.notices)]
    texts += [r.getMessage() for r in caplog.records]
    cause: BaseException | None = info.value
    while cause is not None:
        texts.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    assert [t for t in texts if leaks(t)] == []


async def test_fault_errors_never_leak(sandbox: Sandbox, caplog: pytest.LogCaptureFixture) -> None:
    """Across every fault class, no key appears in the raised error or the log."""
    router = build_router(None, make_settings(sandbox.url))
    try:
        for fault in ("rate_limit", "credits", "server_error", "cut", "malformed", "invalid"):
            with caplog.at_level(logging.DEBUG), pytest.raises(ProviderError) as info:
                await router.process(
                    ProviderRequest("t", "a", "text", prompt=f"x [[fault:{fault}]]"),
                    RecordingSink(),
                )
            assert leaks(str(info.value)) == []
    finally:
        await router.aclose()
    assert [r for r in caplog.records if leaks(r.getMessage())] == []


async def test_sandbox_mode_says_so_instead_of_keys_loaded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pointed at the sandbox with no key set, the log says "sandbox mode" (the placeholders
    are not keys); with a real key set it reports the keys loaded."""
    for var in KEY_FIELDS.values():
        monkeypatch.delenv(var.upper(), raising=False)
    caplog.set_level(logging.INFO, logger="providers.credentials.keyring")
    router = build_processor(None, ProviderSettings(), "http://127.0.0.1:9")
    await router.aclose()
    lines = [r.getMessage() for r in caplog.records]
    assert any("sandbox mode" in line for line in lines)
    assert not any("keys loaded" in line for line in lines)
    caplog.clear()
    with_key = ProviderSettings(OPENAI_API_KEY=SECRET_KEYS["openai"])
    router = build_processor(None, with_key, "http://127.0.0.1:9")
    await router.aclose()
    assert any("keys loaded" in r.getMessage() for r in caplog.records)


@given(
    before=st.text(alphabet="sab-k ", max_size=20),
    after=st.text(alphabet="sab-k ", max_size=20),
    cuts=st.lists(st.integers(0, 80), max_size=6),
)
def test_a_key_split_across_deltas_never_gets_through(
    before: str, after: str, cuts: list[int]
) -> None:
    """However a reply holding a key is cut into deltas, the emitted text is the reply with the
    key masked, and the key never appears in it (nor does it stay pending at the end)."""
    key = "sk-abab-kkkk-abab"
    text = before + key + after
    bounds = sorted({min(c, len(text)) for c in cuts})
    pieces = [text[i:j] for i, j in zip([0, *bounds], [*bounds, len(text)], strict=True)]
    stream = Scrubber([key, "unrelated-secret-9"]).stream()
    out = "".join(stream.feed(p) for p in pieces) + stream.flush()
    assert out == Scrubber([key]).text(text)
    assert key not in out and "***" in out
