"""Gemini API: ``POST /v1beta/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse`` with ``x-goog-api-key``. Errors are google.rpc.Status bodies
whose ``details`` carry ``RetryInfo.retryDelay`` and ``QuotaFailure`` violations."""

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
    AuthFailed,
    InsufficientCredits,
    InvalidRequest,
    NetworkError,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    RateLimited,
)
from providers.headers import parse_duration
from providers.transport.wire import loads_chunk, read_json, sse_events, status_error
from providers.types import ProgressSink, ProviderRequest, ProviderResult, Usage

_FINISH = {
    "STOP": FINISH_STOP,
    "MAX_TOKENS": FINISH_LENGTH,
    "SAFETY": FINISH_FILTER,
    "RECITATION": FINISH_FILTER,
    "BLOCKLIST": FINISH_FILTER,
    "PROHIBITED_CONTENT": FINISH_FILTER,
    "SPII": FINISH_FILTER,
}
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def usage_from(raw: Mapping[str, Any] | None) -> Usage:
    """Thought tokens are billed as output, so output counts them too (as OpenAI's does)."""
    raw = raw or {}
    thoughts = int(raw.get("thoughtsTokenCount") or 0)
    return Usage(
        input_tokens=int(raw.get("promptTokenCount") or 0),
        output_tokens=int(raw.get("candidatesTokenCount") or 0) + thoughts,
        cached_tokens=int(raw.get("cachedContentTokenCount") or 0),
        reasoning_tokens=thoughts,
    )


def _candidate_text(chunk: Mapping[str, Any]) -> tuple[str, str | None]:
    candidates = chunk.get("candidates") or []
    if not candidates:
        return "", None
    first = candidates[0]
    parts = (first.get("content") or {}).get("parts") or []
    text = "".join(p.get("text", "") for p in parts if not p.get("thought"))
    return text, first.get("finishReason")


class GeminiAdapter(HttpAdapter):
    name = "gemini"
    kinds = frozenset({"text", "chat"})

    def _body(self, request: ProviderRequest, model: str) -> dict[str, Any]:
        system, turns = conversation(request)
        body: dict[str, Any] = {
            "contents": [
                {
                    "role": "model" if m.role == "assistant" else "user",
                    "parts": [{"text": m.content}],
                }
                for m in turns
            ],
            "generationConfig": {"maxOutputTokens": max_tokens(request, self.settings)},
        }
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        config = body["generationConfig"]
        for ours, theirs in (
            ("temperature", "temperature"),
            ("top_p", "topP"),
            ("top_k", "topK"),
            ("seed", "seed"),
        ):
            if ours in request.params:
                config[theirs] = request.params[ours]
        if "stop" in request.params:
            config["stopSequences"] = list(request.params["stop"])
        return body

    async def call(self, request: ProviderRequest, model: str, sink: ProgressSink) -> Reply:
        stream = wants_stream(request)
        headers = {"x-goog-api-key": self._key()}
        path = model if model.startswith("models/") else f"models/{model}"
        url = f"v1beta/{path}:{'streamGenerateContent' if stream else 'generateContent'}"

        async def read(response: httpx.Response) -> ProviderResult:
            if stream:
                return await self._read_stream(response, model, sink)
            return self._result(await read_json(response, self.name), model)

        result, exhausted = await self._exchange(
            request,
            "POST",
            url,
            headers=headers,
            json=self._body(request, model),
            params={"alt": "sse"} if stream else None,
            on_ok=read,
        )
        return Reply(result, exhausted)

    def _blocked(self, chunk: Mapping[str, Any]) -> ProviderError | None:
        feedback = chunk.get("promptFeedback") or {}
        if feedback.get("blockReason") and not chunk.get("candidates"):
            return InvalidRequest(
                f"{self.name}: prompt blocked ({feedback['blockReason']})", provider=self.name
            )
        return None

    def _result(self, data: Mapping[str, Any], model: str) -> ProviderResult:
        if "error" in data:
            raise self._status_error(data["error"], 200, None)
        blocked = self._blocked(data)
        if blocked:
            raise blocked
        text, reason = _candidate_text(data)
        if reason is None:
            raise NetworkError(f"{self.name}: answer without a finish reason", provider=self.name)
        return ProviderResult(
            provider=self.name,
            model=str(data.get("modelVersion") or model),
            text=text,
            usage=usage_from(data.get("usageMetadata")),
            finish_reason=_FINISH.get(reason, reason.lower()),
        )

    async def _read_stream(
        self, response: httpx.Response, model: str, sink: ProgressSink
    ) -> ProviderResult:
        parts: list[str] = []
        reason: str | None = None
        usage = Usage()
        async for event in sse_events(response, self.settings.stream_idle_timeout_s, self.name):
            chunk = loads_chunk(event.data, self.name)
            if "error" in chunk:
                raise self._status_error(chunk["error"], 200, None)
            blocked = self._blocked(chunk)
            if blocked:
                raise blocked
            model = str(chunk.get("modelVersion") or model)
            text, finish = _candidate_text(chunk)
            if text:
                parts.append(text)
                sink.delta(text)
            reason = finish or reason
            if chunk.get("usageMetadata"):
                usage = usage_from(chunk["usageMetadata"])
        if reason is None:
            # Gemini ends the SSE stream after the chunk carrying finishReason; no reason = cut
            raise NetworkError(
                f"{self.name}: stream ended before a finish reason", provider=self.name
            )
        return ProviderResult(
            provider=self.name,
            model=model,
            text="".join(parts),
            usage=usage,
            finish_reason=_FINISH.get(reason, reason.lower()),
        )

    def _status_error(
        self, error: Mapping[str, Any], status: int, retry_after: float | None
    ) -> ProviderError:
        code = int(error.get("code") or status)
        rpc = str(error.get("status") or "")
        message = self._clean(str(error.get("message") or rpc or "error"))
        details = [d for d in error.get("details") or [] if isinstance(d, dict)]
        text = f"{self.name}: {rpc or 'HTTP ' + str(code)}: {message}"
        for detail in details:
            if detail.get("@type") == _RETRY_INFO:
                retry_after = parse_duration(str(detail.get("retryDelay") or "")) or retry_after
        reasons = {str(d.get("reason") or "") for d in details if d.get("@type") == _ERROR_INFO}
        if "API_KEY_INVALID" in reasons or rpc in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return AuthFailed(text, provider=self.name, status=code)
        if rpc == "RESOURCE_EXHAUSTED" or code == 429:
            quota_ids = [
                str(v.get("quotaId") or v.get("quotaMetric") or "")
                for d in details
                if d.get("@type") == _QUOTA_FAILURE
                for v in d.get("violations") or []
            ]
            # per-minute quotas come back; a per-day quota or an exhausted billing plan do not
            if any("PerDay" in q for q in quota_ids) or (
                retry_after is None and "billing" in message.lower()
            ):
                return InsufficientCredits(text, provider=self.name, status=code)
            return RateLimited(text, provider=self.name, status=code, retry_after=retry_after)
        if code == 402:
            return InsufficientCredits(text, provider=self.name, status=code)
        if rpc == "UNAVAILABLE" or code == 503:
            return Overloaded(text, provider=self.name, status=code, retry_after=retry_after)
        if rpc == "DEADLINE_EXCEEDED" or code == 504:
            return ProviderTimeout(text, provider=self.name, status=code)
        if status == 200:
            return NetworkError(f"{self.name}: error mid-stream: {message}", provider=self.name)
        return status_error(self.name, code, f"{rpc}: {message}", retry_after)

    def error_from(
        self, status: int, headers: Mapping[str, str], body: bytes, retry_after: float | None
    ) -> ProviderError:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        # the REST API answers a list of Status objects on some endpoints
        if isinstance(data, list) and data:
            data = data[0]
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict):
            return status_error(self.name, status, f"HTTP {status}", retry_after)
        return self._status_error(error, status, retry_after)
