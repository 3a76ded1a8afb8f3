"""What every sandbox wire format shares: the parsed call, deterministic replies, token counts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from providers.errors import BadInput
from providers.sandbox.faults import MARKER, marker_numbers
from providers.sandbox.server import Request, Response

MAX_REPLY_WORDS = 24
RETRY_S = 2  # what rate-limit faults ask the client to wait


def tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def reply_text(prompt: str) -> str:
    """The sandbox's deterministic answer to ``prompt`` (markers stripped)."""
    clean = " ".join(MARKER.sub(" ", prompt).split())
    digest = hashlib.sha256(clean.encode()).hexdigest()[:8]
    words = clean.split()[:MAX_REPLY_WORDS]
    return f"Sandbox reply {digest}: " + " ".join(words) if words else f"Sandbox reply {digest}."


def split_deltas(text: str, parts: int = 4) -> list[str]:
    """``text`` as up to ``parts`` stream deltas whose concatenation is ``text``."""
    words = text.split(" ")
    size = max(1, -(-len(words) // parts))
    chunks = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    return [c if i == len(chunks) - 1 else c + " " for i, c in enumerate(chunks)]


@dataclass(slots=True)
class Call:
    """One parsed generation request."""

    model: str
    stream: bool
    input_text: str  # everything the model reads: token counts and markers come from it
    last_user: str
    reply: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    pace_s: float = 0.0  # between the frames of a streamed answer ([[pace:N]])
    extra: dict[str, object] = field(default_factory=dict)

    def finish(self) -> Call:
        self.reply = reply_text(self.last_user)
        numbers = marker_numbers(self.input_text)
        self.input_tokens = tokens(self.input_text)
        self.cached_tokens = min(numbers.get("cached", 0), self.input_tokens)
        self.reasoning_tokens = numbers.get("reasoning", 0)
        self.pace_s = min(numbers.get("pace", 0), 5000) / 1000
        self.output_tokens = tokens(self.reply) + self.reasoning_tokens
        return self


def json_response(
    status: int, body: object, headers: list[tuple[str, str]] | None = None
) -> Response:
    return Response(
        status, [("content-type", "application/json"), *(headers or [])], orjson.dumps(body)
    )


def sse(data: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    return head + b"data: " + payload + b"\n\n"


def request_json(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(request.body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise BadInput("body is not JSON") from exc
    if not isinstance(body, dict):
        raise BadInput("body is not a JSON object")
    return body


def content(value: Any) -> str:
    """A message content: a string, or a list of text parts/blocks."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(str(p.get("text", "")) for p in value if isinstance(p, dict))
    raise BadInput("content must be a string or a list of parts")


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else None
