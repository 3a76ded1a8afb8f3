"""OpenAI Chat Completions: ``POST /v1/chat/completions`` (``Authorization: Bearer``), streamed
with ``stream_options.include_usage`` so the last chunk carries the usage."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from providers.adapters.base import (
    FINISH_FILTER,
    FINISH_LENGTH,
    FINISH_STOP,
    HttpAdapter,
    Reply,
    conversation,
    max_tokens,
    wants_stream,
)
from providers.errors import (
    InsufficientCredits,
    NetworkError,
    ProviderError,
    RateLimited,
)
from providers.headers import openai_reset
from providers.transport.wire import loads_chunk, read_json, sse_events, status_error
from providers.types import ProgressSink, ProviderRequest, ProviderResult, Usage

_FINISH = {"stop": FINISH_STOP, "length": FINISH_LENGTH, "content_filter": FINISH_FILTER}
_CREDIT_CODES = {"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"}


def usage_from(raw: Mapping[str, Any] | None) -> Usage:
    if not raw:
        return Usage()
    prompt = raw.get("prompt_tokens_details") or {}
    completion = raw.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=int(raw.get("prompt_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        cached_tokens=int(prompt.get("cached_tokens") or 0),
        reasoning_tokens=int(completion.get("reasoning_tokens") or 0),
    )


class OpenAIAdapter(HttpAdapter):
    name = "openai"
    kinds = frozenset({"text", "chat"})

    def _url(self) -> str:
        # accept both "https://api.openai.com" and an OpenAI-style ".../v1" base URL
        return "chat/completions" if self.config.base_url.endswith("/v1") else "v1/chat/completions"

    def _body(self, request: ProviderRequest, model: str, stream: bool) -> dict[str, Any]:
        system, turns = conversation(request)
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": m.role, "content": m.content} for m in turns]
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_completion_tokens": max_tokens(request, self.settings),
        }
        for key in ("temperature", "top_p", "stop", "seed", "reasoning_effort"):
            if key in request.params:
                body[key] = request.params[key]
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def call(self, request: ProviderRequest, model: str, sink: ProgressSink) -> Reply:
        stream = wants_stream(request)
        headers = {"authorization": f"Bearer {self._key()}", "accept": "application/json"}

        async def read(response: httpx.Response) -> ProviderResult:
            if stream:
                return await self._read_stream(response, model, sink)
            return self._result(await read_json(response, self.name), model)

        result, exhausted = await self._exchange(
            request,
            "POST",
            self._url(),
            headers=headers,
            json=self._body(request, model, stream),
            on_ok=read,
        )
        return Reply(result, exhausted)

    def _result(self, data: Mapping[str, Any], model: str) -> ProviderResult:
        if "error" in data:
            raise self._body_error(data["error"], 200, None)
        choice = data["choices"][0]
        message = choice["message"]
        text = message.get("content") or message.get("refusal") or ""
        return ProviderResult(
            provider=self.name,
            model=str(data.get("model") or model),
            text=text,
            usage=usage_from(data.get("usage")),
            finish_reason=_FINISH.get(
                choice.get("finish_reason") or "", choice.get("finish_reason")
            ),
        )

    async def _read_stream(
        self, response: httpx.Response, model: str, sink: ProgressSink
    ) -> ProviderResult:
        parts: list[str] = []
        finish: str | None = None
        usage: Usage | None = None
        done = False
        async for event in sse_events(response, self.settings.stream_idle_timeout_s, self.name):
            if event.data == b"[DONE]":
                done = True
                break
            chunk = loads_chunk(event.data, self.name)
            if "error" in chunk:
                raise self._body_error(chunk["error"], 200, None)
            model = str(chunk.get("model") or model)
            for choice in chunk.get("choices") or ():
                delta = (choice.get("delta") or {}).get("content")
                if delta:
                    parts.append(delta)
                    sink.delta(delta)
                if choice.get("finish_reason"):
                    finish = _FINISH.get(choice["finish_reason"], choice["finish_reason"])
            if chunk.get("usage"):
                usage = usage_from(chunk["usage"])
        if not done or finish is None:
            raise NetworkError(f"{self.name}: stream ended before completion", provider=self.name)
        return ProviderResult(
            provider=self.name,
            model=model,
            text="".join(parts),
            usage=usage or Usage(),
            finish_reason=finish,
        )

    def _body_error(
        self, error: Mapping[str, Any], status: int, retry_after: float | None
    ) -> ProviderError:
        code = str(error.get("code") or "")
        etype = str(error.get("type") or "")
        message = self._clean(str(error.get("message") or etype or "error"))
        if code in _CREDIT_CODES or etype in _CREDIT_CODES:
            return InsufficientCredits(
                f"{self.name}: {code or etype}: {message}", provider=self.name, status=status
            )
        if status == 200:  # an error event inside a stream: the server gave up mid-answer
            if (
                etype in ("rate_limit_exceeded", "requests", "tokens")
                or code == "rate_limit_exceeded"
            ):
                return RateLimited(f"{self.name}: {message}", provider=self.name)
            return NetworkError(f"{self.name}: error mid-stream: {message}", provider=self.name)
        return status_error(self.name, status, f"{code or etype}: {message}", retry_after)

    def error_from(
        self, status: int, headers: Mapping[str, str], body: bytes, retry_after: float | None
    ) -> ProviderError:
        if status == 429 and retry_after is None:
            retry_after = openai_reset(headers)
        try:
            data = orjson.loads(body)
            error = (
                data["error"]
                if isinstance(data, dict) and isinstance(data.get("error"), dict)
                else {}
            )
        except orjson.JSONDecodeError:
            error = {}
        if not error:
            return status_error(self.name, status, f"HTTP {status}", retry_after)
        return self._body_error(error, status, retry_after)
