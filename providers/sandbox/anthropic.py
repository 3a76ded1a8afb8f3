"""Anthropic messages as the sandbox answers them: JSON, or the named SSE event sequence
(message_start … message_stop, with ping and error)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
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


class Anthropic:
    name = "anthropic"

    def key(self, request: Request) -> str | None:
        # the API takes x-api-key; newer SDKs send the same key as a bearer token
        return request.headers.get("x-api-key") or bearer(request)

    def parse(self, request: Request, path: str) -> Call:
        if request.method != "POST" or path != "/v1/messages":
            raise LookupError(path)
        body = request_json(request)
        messages = body.get("messages")
        if (
            not isinstance(body.get("max_tokens"), int)
            or not isinstance(messages, list)
            or not messages
        ):
            raise BadInput("model, max_tokens and messages are required")
        texts = [content(body.get("system") or "")]
        last_user = ""
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                raise BadInput("messages[].role must be user or assistant")
            text = content(m.get("content") or "")
            texts.append(text)
            if m["role"] == "user":
                last_user = text
        return Call(
            str(body.get("model")), bool(body.get("stream")), "\n".join(texts), last_user
        ).finish()

    def _usage(self, call: Call, output: int) -> dict[str, Any]:
        return {
            "input_tokens": call.input_tokens - call.cached_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": call.cached_tokens,
            "output_tokens": output,
            "service_tier": "standard",
        }

    def _message(
        self, call: Call, content: list[Any], stop: str | None, out: int
    ) -> dict[str, Any]:
        return {
            "id": "msg_sandbox" + call.reply[14:22],
            "type": "message",
            "role": "assistant",
            "model": call.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": self._usage(call, out),
        }

    def ok(self, call: Call) -> dict[str, Any]:
        return self._message(
            call, [{"type": "text", "text": call.reply}], "end_turn", call.output_tokens
        )

    def frames(self, call: Call) -> list[bytes]:
        out = [
            sse(
                {"type": "message_start", "message": self._message(call, [], None, 1)},
                "message_start",
            ),
            sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            ),
            sse({"type": "ping"}, "ping"),
        ]
        out += [
            sse(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": d},
                },
                "content_block_delta",
            )
            for d in split_deltas(call.reply)
        ]
        out += [
            sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": call.output_tokens},
                },
                "message_delta",
            ),
            sse({"type": "message_stop"}, "message_stop"),
        ]
        return out

    def stream_type(self, call: Call) -> str:
        return "text/event-stream"

    def midstream(self, call: Call) -> bytes:
        return sse(
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            "error",
        )

    def malformed(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", "ind\n\n'

    def limit_headers(self, exhausted: bool) -> list[tuple[str, str]]:
        reset = (
            datetime.fromtimestamp(time.time() + RETRY_S, UTC).isoformat().replace("+00:00", "Z")
        )
        return [
            ("anthropic-ratelimit-requests-limit", "4000"),
            ("anthropic-ratelimit-requests-remaining", "0" if exhausted else "3999"),
            ("anthropic-ratelimit-requests-reset", reset),
            ("anthropic-ratelimit-tokens-limit", "400000"),
            ("anthropic-ratelimit-tokens-remaining", "399000"),
            ("anthropic-ratelimit-tokens-reset", reset),
        ]

    def error(self, fault: str, key: str) -> Response:
        def err(
            code: int,
            etype: str,
            message: str,
            headers: list[tuple[str, str]] | None = None,
            **extra: Any,
        ) -> Response:
            error = {"type": etype, "message": message, **extra}
            return json_response(
                code, {"type": "error", "error": error, "request_id": "req_sandbox"}, headers
            )

        if fault == "rate_limit":
            return err(
                429,
                "rate_limit_error",
                "This request would exceed the rate limit for your "
                "organization of 4,000 requests per minute.",
                [("retry-after", str(RETRY_S)), *self.limit_headers(True)],
            )
        if fault == "spend_limit":
            return err(
                429,
                "rate_limit_error",
                "You have reached your specified API usage limits.",
                details={"error_code": "enforced_spend_limit_reached"},
            )
        if fault == "billing":
            return err(402, "billing_error", "Your account has a billing issue.")
        if fault == "credits":
            return err(
                400,
                "invalid_request_error",
                "Your credit balance is too low to access the "
                "Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
            )
        if fault in ("unavailable", "overloaded"):
            return err(529, "overloaded_error", "Overloaded")
        if fault == "server_error":
            return err(500, "api_error", "Internal server error")
        if fault == "bad_key":
            return err(401, "authentication_error", f"invalid x-api-key {key}")
        if fault == "no_key":
            return err(401, "authentication_error", "x-api-key header is required")
        if fault == "not_found":
            return err(404, "not_found_error", "Not found")
        return err(400, "invalid_request_error", "max_tokens: Field required")
