"""The sandbox application: routes ``/<provider>/...`` to its wire format, checks the key,
applies latency and the chosen fault, and renders success, stream or error in that format.

Control endpoints: ``GET /_sandbox/stats`` (``requests`` per provider — every call it received
— and ``faults_by_provider``: how many of them it answered with each fault);
``POST /_sandbox/faults`` with ``{"provider": "gemini", "fault": "unavailable", "times": 5}``
(or ``{"clear": true}``).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any, Protocol

import orjson

from providers.errors import Abort, BadInput
from providers.sandbox.anthropic import Anthropic
from providers.sandbox.common import Call, json_response
from providers.sandbox.faults import FaultPlan
from providers.sandbox.gemini import Gemini
from providers.sandbox.images import Pexels, Unsplash
from providers.sandbox.openai import OpenAI
from providers.sandbox.server import Request, Response


class Format(Protocol):
    name: str

    def key(self, request: Request) -> str | None: ...
    def parse(self, request: Request, path: str) -> Call: ...
    def ok(self, call: Call) -> dict[str, Any]: ...
    def limit_headers(self, exhausted: bool) -> list[tuple[str, str]]: ...
    def error(self, fault: str, key: str) -> Response: ...


class StreamFormat(Format, Protocol):
    def frames(self, call: Call) -> list[bytes]: ...
    def stream_type(self, call: Call) -> str: ...
    def midstream(self, call: Call) -> bytes: ...
    def malformed(self) -> bytes: ...


FORMATS: dict[str, Format] = {
    f.name: f for f in (Gemini(), OpenAI(), Anthropic(), Unsplash(), Pexels())
}
_ERROR_FAULTS = frozenset(
    {
        "rate_limit",
        "unavailable",
        "overloaded",
        "server_error",
        "credits",
        "spend_limit",
        "billing",
        "bad_key",
        "invalid",
    }
)


class SandboxApp:
    """All five providers behind one server; deterministic, with latency and faults."""

    def __init__(
        self,
        latency_s: float = 0.0,
        fault_rate: float = 0.0,
        seed: int | None = None,
        bad_keys: Collection[str] = (),
        hang_s: float = 60.0,
    ) -> None:
        self.latency_s = latency_s
        self.faults = FaultPlan(fault_rate, seed)
        self.bad_keys = set(bad_keys)
        self.hang_s = hang_s
        self.requests: dict[str, int] = defaultdict(int)
        self.seen_http: dict[str, int] = defaultdict(int)
        self.stats_extra: Callable[[], dict[str, Any]] = dict

    async def __call__(self, request: Request) -> Response:
        _, _, rest = request.path.partition("/")
        provider, _, tail = rest.partition("/")
        if provider == "_sandbox":
            return self._control(request, tail)
        fmt = FORMATS.get(provider)
        if fmt is None:
            return json_response(404, {"error": f"unknown provider path {request.path!r}"})
        self.requests[provider] += 1
        self.seen_http[request.http_version] += 1
        key = fmt.key(request)
        try:
            call = fmt.parse(request, "/" + tail)
        except LookupError:
            return fmt.error("not_found", "")
        except BadInput:
            return fmt.error("invalid", "")
        if not key:
            return fmt.error("no_key", "")
        if key in self.bad_keys:
            return fmt.error("bad_key", key)
        fault = self.faults.choose(
            provider, request.headers.get("x-sandbox-fault"), call.input_text
        )
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if fault in _ERROR_FAULTS:
            return fmt.error(str(fault), key)
        if fault == "reset":
            raise Abort
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
            raise Abort
        if fault == "echo_key":
            call.reply = f"{call.reply} {key}"
        headers = fmt.limit_headers(fault == "remaining0")
        if call.stream and hasattr(fmt, "frames"):
            return self._stream(fmt, call, fault, headers)  # type: ignore[arg-type]
        body = orjson.dumps(fmt.ok(call))
        headers = [("content-type", "application/json"), *headers]
        if fault in ("cut", "stall"):
            return Response(200, headers, stream=self._partial(body, fault))
        if fault == "malformed":
            body = body[: len(body) // 2]
        if fault == "midstream_error":
            return fmt.error("server_error", key)
        return Response(200, headers, body)

    async def _partial(self, body: bytes, fault: str | None) -> AsyncIterator[bytes]:
        yield body[: len(body) // 2]
        if fault == "stall":
            await asyncio.sleep(self.hang_s)
        raise Abort

    def _stream(
        self, fmt: StreamFormat, call: Call, fault: str | None, headers: list[tuple[str, str]]
    ) -> Response:
        frames = fmt.frames(call)
        head_n = max(2, len(frames) // 2)  # frames (some deltas) sent before a mid-stream fault

        async def body() -> AsyncIterator[bytes]:
            head = (
                frames
                if fault not in ("cut", "stall", "malformed", "midstream_error")
                else (frames[:head_n])
            )
            for frame in head:
                yield frame
                await asyncio.sleep(call.pace_s)
            if fault == "cut":
                raise Abort
            if fault == "stall":
                await asyncio.sleep(self.hang_s)
                raise Abort
            if fault == "malformed":
                yield fmt.malformed()
                for frame in frames[head_n:]:
                    yield frame
            if fault == "midstream_error":
                yield fmt.midstream(call)

        return Response(
            200,
            [("content-type", fmt.stream_type(call)), ("cache-control", "no-cache"), *headers],
            stream=body(),
        )

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "http_versions": dict(self.seen_http),
            "faults_injected": dict(self.faults.injected),
            "faults_by_provider": {p: dict(f) for p, f in self.faults.by_provider.items()},
            **self.stats_extra(),
        }

    def _control(self, request: Request, tail: str) -> Response:
        if tail == "stats":
            return json_response(200, self.stats())
        if tail == "faults" and request.method == "POST":
            try:
                body = orjson.loads(request.body)
                if body.get("clear"):
                    self.faults.clear(body.get("provider"))
                else:
                    self.faults.inject(
                        str(body["provider"]), str(body["fault"]), int(body.get("times", 1))
                    )
            except (orjson.JSONDecodeError, KeyError, ValueError, AttributeError) as exc:
                return json_response(400, {"error": str(exc)})
            return json_response(200, {"ok": True})
        return json_response(404, {"error": "unknown control endpoint"})
