"""OpenAI chat completions as the sandbox answers them: JSON, or ``data:`` chunks ending in
``[DONE]`` with the usage chunk when ``stream_options.include_usage`` is set."""

from __future__ import annotations

import time
from typing import Any

from providers.errors import BadInput
from providers.sandbox.common import (
    RETRY_S,
    Call,
    bearer,
    content,
    json_response,
    request_json,
    split_deltas,
    sse,
)
from providers.sandbox.server import Request, Response


class OpenAI:
    name = "openai"

    def key(self, request: Request) -> str | None:
        return bearer(request)

    def parse(self, request: Request, path: str) -> Call:
        if request.method != "POST" or path != "/v1/chat/completions":
            raise LookupError(path)
        body = request_json(request)
        messages = body.get("messages")
        if not isinstance(body.get("model"), str) or not isinstance(messages, list) or not messages:
            raise BadInput("model and messages are required")
        texts, last_user = [], ""
        for m in messages:
            if not isinstance(m, dict):
                raise BadInput("messages[] must be objects")
            text = content(m.get("content") or "")
            texts.append(text)
            if m.get("role") == "user":
                last_user = text
        call = Call(body["model"], bool(body.get("stream")), "\n".join(texts), last_user)
        call.extra["include_usage"] = bool((body.get("stream_options") or {}).get("include_usage"))
        return call.finish()

    def _usage(self, call: Call) -> dict[str, Any]:
        return {
            "prompt_tokens": call.input_tokens,
            "completion_tokens": call.output_tokens,
            "total_tokens": call.input_tokens + call.output_tokens,
            "prompt_tokens_details": {"cached_tokens": call.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": call.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _head(self, call: Call, obj: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-sandbox" + call.reply[14:22],
            "object": obj,
            "created": int(time.time()),
            "model": call.model,
            "system_fingerprint": "fp_sandbox",
        }

    def ok(self, call: Call) -> dict[str, Any]:
        return {
            **self._head(call, "chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": call.reply, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": self._usage(call),
            "service_tier": "default",
        }

    def frames(self, call: Call) -> list[bytes]:
        head = self._head(call, "chat.completion.chunk")

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            return sse(
                {
                    **head,
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ],
                    "usage": None,
                }
            )

        out = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
        out += [chunk({"content": d}, None) for d in split_deltas(call.reply)]
        out.append(chunk({}, "stop"))
        if call.extra.get("include_usage"):
            out.append(sse({**head, "choices": [], "usage": self._usage(call)}))
        out.append(b"data: [DONE]\n\n")
        return out

    def stream_type(self, call: Call) -> str:
        return "text/event-stream"

    def midstream(self, call: Call) -> bytes:
        return sse(
            {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )

    def malformed(self) -> bytes:
        return b'data: {"id": "chatcmpl-x", "choices": [{"delta": {"cont\n\n'

    def limit_headers(self, exhausted: bool) -> list[tuple[str, str]]:
        left = "0" if exhausted else "9999"
        return [
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-remaining-requests", left),
            ("x-ratelimit-reset-requests", f"{RETRY_S}s" if exhausted else "6ms"),
            ("x-ratelimit-limit-tokens", "10000000"),
            ("x-ratelimit-remaining-tokens", "9999000"),
            ("x-ratelimit-reset-tokens", "0s"),
        ]

    def error(self, fault: str, key: str) -> Response:
        def err(
            code: int,
            message: str,
            etype: str,
            ecode: str | None,
            headers: list[tuple[str, str]] | None = None,
        ) -> Response:
            return json_response(
                code,
                {"error": {"message": message, "type": etype, "param": None, "code": ecode}},
                headers,
            )

        if fault == "rate_limit":
            return err(
                429,
                "Rate limit reached for requests per min (RPM): Limit 10000, Used "
                f"10000, Requested 1. Please try again in {RETRY_S}s.",
                "requests",
                "rate_limit_exceeded",
                self.limit_headers(True),
            )
        if fault in ("credits", "spend_limit", "billing"):
            return err(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            )
        if fault in ("unavailable", "overloaded"):
            return err(
                503,
                "The engine is currently overloaded, please try again later.",
                "server_error",
                None,
            )
        if fault == "server_error":
            return err(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )
        if fault == "bad_key":
            return err(
                401,
                f"Incorrect API key provided: {key}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        if fault == "no_key":
            return err(401, "You didn't provide an API key.", "invalid_request_error", None)
        if fault == "not_found":
            return err(404, "Unknown request URL.", "invalid_request_error", "unknown_url")
        return err(400, "Invalid request: 'messages' is required.", "invalid_request_error", None)
