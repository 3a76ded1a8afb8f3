"""The official SDKs (openai, anthropic, google-genai) against the sandbox: proof that it
speaks the real wire formats, success, streaming and errors included."""

from __future__ import annotations

import pytest

from providers.sandbox import Sandbox, reply_text

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
genai = pytest.importorskip("google.genai")
genai_types = pytest.importorskip("google.genai.types")
genai_errors = pytest.importorskip("google.genai.errors")

KEY = "test-key-sdk-0000"


def openai_client(sandbox: Sandbox) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=KEY, base_url=f"{sandbox.url}/openai/v1", max_retries=0)


def anthropic_client(sandbox: Sandbox) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=KEY, base_url=f"{sandbox.url}/anthropic", max_retries=0)


def gemini_client(sandbox: Sandbox) -> genai.Client:
    options = genai_types.HttpOptions(base_url=f"{sandbox.url}/gemini", api_version="v1beta")
    return genai.Client(api_key=KEY, http_options=options)


async def test_openai_sdk_completion_and_stream(sandbox: Sandbox) -> None:
    """openai: a completion and a stream with include_usage parse into the SDK's types."""
    async with openai_client(sandbox) as client:
        msgs = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi [[cached:1]]"},
        ]
        done = await client.chat.completions.create(model="gpt-5-mini", messages=msgs)
        assert done.choices[0].message.content == reply_text("hi [[cached:1]]")
        assert done.usage is not None and done.usage.prompt_tokens_details is not None
        assert done.usage.prompt_tokens_details.cached_tokens == 1
        stream = await client.chat.completions.create(
            model="gpt-5-mini", messages=msgs, stream=True, stream_options={"include_usage": True}
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            usage = chunk.usage or usage
        assert text == done.choices[0].message.content
        assert usage is not None and usage.completion_tokens == done.usage.completion_tokens


async def test_openai_sdk_errors(sandbox: Sandbox) -> None:
    """openai: rate limit, quota and key errors are the SDK's own exception classes."""
    async with openai_client(sandbox) as client:
        msgs = [{"role": "user", "content": "x [[fault:rate_limit]]"}]
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="gpt-5-mini", messages=msgs)
        msgs = [{"role": "user", "content": "x [[fault:credits]]"}]
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="gpt-5-mini", messages=msgs)
        assert info.value.code == "insufficient_quota"
        msgs = [{"role": "user", "content": "x [[fault:bad_key]]"}]
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="gpt-5-mini", messages=msgs)


async def test_anthropic_sdk_message_and_stream(sandbox: Sandbox) -> None:
    """anthropic: messages.create and the streaming helper accumulate the same message."""
    async with anthropic_client(sandbox) as client:
        kwargs = {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "system": "be brief",
            "messages": [{"role": "user", "content": "hello claude"}],
        }
        message = await client.messages.create(**kwargs)
        assert message.content[0].text == reply_text("hello claude")
        assert message.stop_reason == "end_turn"
        async with client.messages.stream(**kwargs) as stream:
            pieces = [t async for t in stream.text_stream]
            final = await stream.get_final_message()
        assert "".join(pieces) == message.content[0].text
        assert final.usage.output_tokens == message.usage.output_tokens


async def test_anthropic_sdk_errors(sandbox: Sandbox) -> None:
    """anthropic: 529 overloaded, 429 and a mid-stream error event raise SDK errors."""
    async with anthropic_client(sandbox) as client:

        def kwargs(fault: str) -> dict[str, object]:
            return {
                "model": "claude-haiku-4-5",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": f"x [[fault:{fault}]]"}],
            }

        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(**kwargs("overloaded"))
        assert info.value.status_code == 529
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(**kwargs("rate_limit"))
        with pytest.raises(anthropic.APIError):
            async with client.messages.stream(**kwargs("midstream_error")) as stream:
                await stream.get_final_message()


async def test_gemini_sdk_generate_and_stream(sandbox: Sandbox) -> None:
    """google-genai: generate_content and generate_content_stream read the sandbox's answers."""
    client = gemini_client(sandbox)
    try:
        await _gemini_generate_and_stream(client)
    finally:
        await client.aio.aclose()


async def _gemini_generate_and_stream(client: genai.Client) -> None:
    config = genai_types.GenerateContentConfig(system_instruction="be brief")
    response = await client.aio.models.generate_content(
        model="gemini-2.5-flash", contents="hello gemini [[reasoning:2]]", config=config
    )
    assert response.text == reply_text("hello gemini [[reasoning:2]]")
    assert response.usage_metadata is not None
    assert response.usage_metadata.thoughts_token_count == 2
    text = ""
    async for chunk in await client.aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hello gemini [[reasoning:2]]"
    ):
        text += chunk.text or ""
    assert text == response.text


async def test_gemini_sdk_errors(sandbox: Sandbox) -> None:
    """google-genai: RESOURCE_EXHAUSTED and UNAVAILABLE arrive as the SDK's API errors."""
    client = gemini_client(sandbox)
    try:
        await _gemini_errors(client)
    finally:
        await client.aio.aclose()


async def _gemini_errors(client: genai.Client) -> None:
    with pytest.raises(genai_errors.ClientError) as info:
        await client.aio.models.generate_content(
            model="gemini-2.5-flash", contents="x [[fault:rate_limit]]"
        )
    assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(genai_errors.ServerError) as server:
        await client.aio.models.generate_content(
            model="gemini-2.5-flash", contents="x [[fault:unavailable]]"
        )
    assert server.value.code == 503
