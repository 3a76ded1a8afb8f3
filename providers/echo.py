"""In-process providers for tests, benchmarks and demos: no network, deterministic.

``EchoProvider`` answers with the prompt. ``ScriptedProvider`` follows ``params["script"]``, one
step per attempt (the last step repeats), so a test can make any error class happen on demand:

    "ok"                   succeed (echo)
    "sleep:S"              sleep S seconds, then succeed (a long call, for crash/cancel tests)
    "stream:N"             succeed after streaming N deltas
    "<ErrorClass>[:R]"     raise that error, with retry_after R seconds when given
"""

from __future__ import annotations

import asyncio

from providers.errors import ERROR_CLASSES, ProviderError
from providers.types import ProgressSink, ProviderRequest, ProviderResult, Usage


def _echo_text(request: ProviderRequest) -> str:
    if request.kind == "chat":
        users = [m.content for m in request.messages if m.role == "user"]
        return users[-1] if users else ""
    return request.prompt


def _echo_result(request: ProviderRequest, text: str) -> ProviderResult:
    words = len(text.split())
    return ProviderResult(
        provider="echo",
        model="echo-1",
        text=text,
        usage=Usage(input_tokens=words, output_tokens=words),
        finish_reason="stop",
        cost_usd=0.0,
    )


class EchoProvider:
    """Returns the prompt as the result, instantly."""

    async def process(self, request: ProviderRequest, sink: ProgressSink) -> ProviderResult:
        return _echo_result(request, _echo_text(request))

    async def aclose(self) -> None:
        return None


class ScriptedProvider:
    """Behaves as ``params["script"]`` says for the current attempt (see module docstring)."""

    async def process(self, request: ProviderRequest, sink: ProgressSink) -> ProviderResult:
        script = request.params.get("script") or ["ok"]
        step = str(script[min(request.attempt, len(script)) - 1])
        name, _, arg = step.partition(":")
        text = _echo_text(request)
        if name == "ok":
            pass
        elif name == "sleep":
            await asyncio.sleep(float(arg))
        elif name == "stream":
            for i in range(int(arg)):
                sink.delta(f"chunk{i} ")
                await asyncio.sleep(0.01)
        elif name in ERROR_CLASSES:
            raise ERROR_CLASSES[name](
                f"scripted {name} on attempt {request.attempt}",
                provider="scripted",
                retry_after=float(arg) if arg else None,
            )
        else:
            raise ProviderError(f"unknown script step {step!r}", provider="scripted")
        return _echo_result(request, text)

    async def aclose(self) -> None:
        return None
