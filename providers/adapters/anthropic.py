"""Anthropic Messages: ``POST /v1/messages`` (``x-api-key``, ``anthropic-version: 2023-06-01``),
streamed as message_start → content_block_start → content_block_delta* → content_block_stop →
message_delta → message_stop, with ``ping`` and ``error`` events possible anywhere."""

from __future__ import annotations

import time
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
    InvalidRequest,
    NetworkError,
    Overloaded,
    ProviderError,
    RateLimited,
)
from providers.headers import anthropic_reset
from providers.transport.wire import loads_chunk, read_json, sse_events, status_error
from providers.types import ProgressSink, ProviderRequest, ProviderResult, Usage

API_VERSION = "2023-06-01"
_FINISH = {
    "end_turn": FINISH_STOP,
    "stop_sequence": FINISH_STOP,
    "max_tokens": FINISH_LENGTH,
    "refusal": FINISH_FILTER,
    "tool_use": "tool_calls",
}
_SPEND_LIMIT = "enforced_spend_limit_reached"


def usage_from(raw: Mapping[str, Any] | None, output: int | None = None) -> Usage:
    """Anthropic's ``input_tokens`` excludes cache reads and writes; ours is the total input."""
    raw = raw or {}
    read = int(raw.get("cache_read_input_tokens") or 0)
    write = int(raw.get("cache_creation_input_tokens") or 0)
    return Usage(
        input_tokens=int(raw.get("input_tokens") or 0) + read + write,
        output_tokens=int(output if output is not None else raw.get("output_tokens") or 0),
        cached_tokens=read,
    )


class AnthropicAdapter(HttpAdapter):
    name = "anthropic"
    kinds = frozenset({"text", "chat"})

    def _body(self, request: ProviderRequest, model: str, stream: bool) -> dict[str, Any]:
        system, turns = conversation(request)
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens(request, self.settings),
            "messages": [{"role": m.role, "content": m.content} for m in turns],
        }
        if system:
            body["system"] = system
        for key in ("temperature", "top_p", "top_k"):
            if key in request.params:
                body[key] = request.params[key]
        if "stop" in request.params:
            body["stop_sequences"] = list(request.params["stop"])
        if stream:
            body["stream"] = True
        return body

    async def call(self, request: ProviderRequest, model: str, sink: ProgressSink) -> Reply:
        stream = wants_stream(request)
        headers = {
            "x-api-key": self._key(),
            "anthropic-version": API_VERSION,
            "accept": "text/event-stream" if stream else "application/json",
        }

        async def read(response: httpx.Response) -> ProviderResult:
            if stream:
                return await self._read_stream(response, model, sink)
            return self._result(await read_json(response, self.name), model)

        result, exhausted = await self._exchange(
            request,
            "POST",
            "v1/messages",
            headers=headers,
            json=self._body(request, model, stream),
            on_ok=read,
        )
        return Reply(result, exhausted)

    def _result(self, data: Mapping[str, Any], model: str) -> ProviderResult:
        if data.get("type") == "error":
            raise self._body_error(data.get("error") or {}, 200, None)
        text = "".join(b.get("text", "") for b in data["content"] if b.get("type") == "text")
        reason = data.get("stop_reason") or ""
        return ProviderResult(
            provider=self.name,
            model=str(data.get("model") or model),
            text=text,
            usage=usage_from(data.get("usage")),
            finish_reason=_FINISH.get(reason, reason or None),
        )

    async def _read_stream(
        self, response: httpx.Response, model: str, sink: ProgressSink
    ) -> ProviderResult:
        parts: list[str] = []
        start_usage: Mapping[str, Any] = {}
        output_tokens: int | None = None
        reason: str | None = None
        stopped = False
        try:
            async for event in sse_events(response, self.settings.stream_idle_timeout_s, self.name):
                data = loads_chunk(event.data, self.name)
                kind = data.get("type") or event.event
                if kind == "message_start":
                    message = data["message"]
                    model = str(message.get("model") or model)
                    start_usage = message.get("usage") or {}
                elif kind == "content_block_delta":
                    delta = data["delta"]
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        parts.append(delta["text"])
                        sink.delta(delta["text"])
                elif kind == "message_delta":
                    reason = (data.get("delta") or {}).get("stop_reason") or reason
                    usage = data.get("usage") or {}
                    if "output_tokens" in usage:
                        output_tokens = int(usage["output_tokens"])
                elif kind == "message_stop":
                    stopped = True
                    break
                elif kind == "error":
                    raise self._body_error(data.get("error") or {}, 200, None)
                # ping, content_block_start/stop and unknown future events carry nothing we need
            if not stopped:
                raise NetworkError(
                    f"{self.name}: stream ended before message_stop", provider=self.name
                )
        except ProviderError as exc:
            # message_start carried the usage Anthropic bills for this call even though it
            # failed: hand it to the router so the spend is counted
            if start_usage and exc.usage is None:
                exc.usage = usage_from(start_usage, output_tokens)
            raise
        return ProviderResult(
            provider=self.name,
            model=model,
            text="".join(parts),
            usage=usage_from(start_usage, output_tokens),
            finish_reason=_FINISH.get(reason or "", reason),
        )

    def _body_error(
        self, error: Mapping[str, Any], status: int, retry_after: float | None
    ) -> ProviderError:
        etype = str(error.get("type") or "")
        message = self._clean(str(error.get("message") or etype or "error"))
        details = error.get("details") or {}
        code = str(details.get("error_code") or "") if isinstance(details, dict) else ""
        text = f"{self.name}: {etype or 'HTTP ' + str(status)}: {message}"
        if etype == "billing_error" or code == _SPEND_LIMIT or "credit balance" in message:
            return InsufficientCredits(text, provider=self.name, status=status)
        if etype == "overloaded_error":
            return Overloaded(text, provider=self.name, status=status, retry_after=retry_after)
        if etype == "rate_limit_error":
            return RateLimited(text, provider=self.name, status=status, retry_after=retry_after)
        if etype in ("invalid_request_error", "not_found_error", "request_too_large"):
            return InvalidRequest(text, provider=self.name, status=status)
        if status == 200:  # api_error or unknown inside a stream
            return NetworkError(f"{self.name}: error mid-stream: {message}", provider=self.name)
        return status_error(self.name, status, f"{etype}: {message}", retry_after)

    def error_from(
        self, status: int, headers: Mapping[str, str], body: bytes, retry_after: float | None
    ) -> ProviderError:
        if status == 429 and retry_after is None:
            retry_after = anthropic_reset(headers, time.time())
        try:
            data = orjson.loads(body)
            error = data.get("error") if isinstance(data, dict) else None
        except orjson.JSONDecodeError:
            error = None
        if not isinstance(error, dict):
            return status_error(self.name, status, f"HTTP {status}", retry_after)
        return self._body_error(error, status, retry_after)
