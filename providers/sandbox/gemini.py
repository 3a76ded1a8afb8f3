"""Gemini generateContent / streamGenerateContent (``alt=sse`` or a JSON array) as the sandbox
answers it, with google.rpc.Status error bodies."""

from __future__ import annotations

from typing import Any

import orjson

from providers.errors import BadInput
from providers.sandbox.common import (
    RETRY_S,
    Call,
    content,
    json_response,
    request_json,
    split_deltas,
    sse,
)
from providers.sandbox.server import Request, Response

RPC = "type.googleapis.com/google.rpc."
_FREE_TIER = "generativelanguage.googleapis.com/generate_content_free_tier_requests"


class Gemini:
    name = "gemini"

    def key(self, request: Request) -> str | None:
        return request.headers.get("x-goog-api-key") or request.query.get("key")

    def parse(self, request: Request, path: str) -> Call:
        # /v1beta/models/{model}:generateContent | :streamGenerateContent
        prefix = "/v1beta/models/"
        if request.method != "POST" or not path.startswith(prefix) or ":" not in path:
            raise LookupError(path)
        model, _, action = path[len(prefix) :].partition(":")
        if action not in ("generateContent", "streamGenerateContent"):
            raise LookupError(path)
        body = request_json(request)
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise BadInput("contents is required")
        texts, last_user = [], ""
        system = body.get("systemInstruction") or body.get("system_instruction")
        if isinstance(system, dict):
            texts.append(content(system.get("parts") or []))
        for item in contents:
            if not isinstance(item, dict):
                raise BadInput("contents[] must be objects")
            text = content(item.get("parts") or [])
            texts.append(text)
            if item.get("role", "user") == "user":
                last_user = text
        call = Call(model, action == "streamGenerateContent", "\n".join(texts), last_user)
        call.extra["sse"] = request.query.get("alt") == "sse"
        return call.finish()

    def _usage(self, call: Call) -> dict[str, Any]:
        usage = {
            "promptTokenCount": call.input_tokens,
            "candidatesTokenCount": call.output_tokens - call.reasoning_tokens,
            "totalTokenCount": call.input_tokens + call.output_tokens,
        }
        if call.cached_tokens:
            usage["cachedContentTokenCount"] = call.cached_tokens
        if call.reasoning_tokens:
            usage["thoughtsTokenCount"] = call.reasoning_tokens
        return usage

    def _chunk(self, call: Call, text: str, finish: bool) -> dict[str, Any]:
        candidate: dict[str, Any] = {
            "content": {"parts": [{"text": text}], "role": "model"},
            "index": 0,
        }
        if finish:
            candidate["finishReason"] = "STOP"
        return {
            "candidates": [candidate],
            "usageMetadata": self._usage(call),
            "modelVersion": call.model,
            "responseId": "sandbox-" + call.reply[14:22],
        }

    def ok(self, call: Call) -> dict[str, Any]:
        return self._chunk(call, call.reply, True)

    def frames(self, call: Call) -> list[bytes]:
        deltas = split_deltas(call.reply)
        chunks = [self._chunk(call, d, i == len(deltas) - 1) for i, d in enumerate(deltas)]
        if call.extra.get("sse"):
            return [orjson.dumps(c).join((b"data: ", b"\r\n\r\n")) for c in chunks]
        # without alt=sse the REST API streams one JSON array
        body = [orjson.dumps(c) for c in chunks]
        return [b"[" + body[0]] + [b",\r\n" + c for c in body[1:]] + [b"]"]

    def stream_type(self, call: Call) -> str:
        return "text/event-stream" if call.extra.get("sse") else "application/json"

    def midstream(self, call: Call) -> bytes:
        return sse(
            {
                "error": {
                    "code": 500,
                    "message": "An internal error has occurred.",
                    "status": "INTERNAL",
                }
            }
        )

    def malformed(self) -> bytes:
        return b'data: {"candidates": [{"content": {"parts": [{"te\r\n\r\n'

    def limit_headers(self, exhausted: bool) -> list[tuple[str, str]]:
        return []  # Gemini sends no rate-limit headers

    def error(self, fault: str, key: str) -> Response:
        def status(code: int, rpc: str, message: str, *details: dict[str, Any]) -> Response:
            return json_response(
                code,
                {
                    "error": {
                        "code": code,
                        "message": message,
                        "status": rpc,
                        "details": list(details),
                    }
                },
            )

        quota = "You exceeded your current quota, please check your plan and billing details."
        if fault == "rate_limit":
            return status(
                429,
                "RESOURCE_EXHAUSTED",
                quota,
                {
                    "@type": RPC + "QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": _FREE_TIER,
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        }
                    ],
                },
                {"@type": RPC + "RetryInfo", "retryDelay": f"{RETRY_S}s"},
            )
        if fault in ("credits", "spend_limit", "billing"):
            return status(
                429,
                "RESOURCE_EXHAUSTED",
                quota,
                {
                    "@type": RPC + "QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": _FREE_TIER,
                            "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                        }
                    ],
                },
            )
        if fault in ("unavailable", "overloaded"):
            return status(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
        if fault == "server_error":
            return status(500, "INTERNAL", "An internal error has occurred.")
        if fault == "bad_key":
            return status(
                400,
                "INVALID_ARGUMENT",
                f"API key not valid. Please pass a valid API key. ({key})",
                {
                    "@type": RPC + "ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                },
            )
        if fault == "no_key":
            return status(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity.",
            )
        if fault == "not_found":
            return status(404, "NOT_FOUND", "Requested entity was not found.")
        return status(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
