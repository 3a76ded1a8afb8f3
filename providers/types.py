"""Provider-neutral request and result types: the whole vocabulary the engine and the adapters
share. Plain frozen dataclasses — they are built on the hot path, validation happened at submit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Kind = Literal["text", "chat", "image"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """One call's worth of work. ``prompt`` for text/image, ``messages`` for chat."""

    task_id: str
    tenant: str
    kind: Kind
    prompt: str = ""
    messages: Sequence[ChatMessage] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    deadline: float | None = None  # unix seconds; adapters cap their timeouts to it


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Image:
    url: str
    width: int | None = None
    height: int | None = None
    author: str | None = None
    source_url: str | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderResult:
    """What a successful call produced, in provider-neutral terms."""

    provider: str
    model: str
    text: str | None = None
    images: Sequence[Image] = ()
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    cost_usd: float | None = None  # None: price unknown (never a silent 0)


class ProgressSink(Protocol):
    """Where a provider reports what happens during a call; the worker turns it into events."""

    def delta(self, text: str) -> None:
        """A streamed text delta (becomes ``TaskProgress``)."""

    def notice(self, kind: str, data: Mapping[str, Any]) -> None:
        """Something worth an event: an attempt, a fallback, discarded partial output."""


class TaskProcessor(Protocol):
    """The seed's unified interface; the engine's worker calls ``process``."""

    async def process(self, request: ProviderRequest, sink: ProgressSink) -> ProviderResult: ...

    async def aclose(self) -> None: ...
