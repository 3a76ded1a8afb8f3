"""OpenAI's Chat Completions request, checked strictly, and the task it becomes.

What we honour maps onto the task (``messages`` → chat input, ``max_tokens`` → ``params``…);
what we cannot honour is refused with a 400 naming the ``param`` — never silently dropped.
A field that is harmless at its default (``n: 1``, ``logprobs: false``, ``presence_penalty: 0``)
is accepted at that value only. Responses are built as plain dicts (the hot path).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import ProtocolError

MAX_METADATA_KEYS = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    refusal: None = None


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: Literal[False] | None = None


class ChatRequest(_Strict):
    """The fields of ``POST /v1/chat/completions`` we honour."""

    model: str = Field(min_length=1, max_length=200)
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=200_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=200_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    user: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None


def _off(value: Any) -> bool:
    return value is None or value is False


# accepted only at a value that changes nothing; any other value is refused with its param
HARMLESS: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v is None or v == 1,
    "logprobs": _off,
    "top_logprobs": lambda v: v is None or v == 0,
    "presence_penalty": lambda v: v is None or v == 0,
    "frequency_penalty": lambda v: v is None or v == 0,
    "logit_bias": lambda v: v is None or v == {},
    "store": _off,
    "parallel_tool_calls": lambda v: True,  # meaningless without tools, which are refused
    "service_tier": lambda v: v is None or v in ("auto", "default"),
    "modalities": lambda v: v is None or v == ["text"],
    "response_format": lambda v: v is None or v == {"type": "text"},
    "tools": lambda v: v is None or v == [],
    "functions": lambda v: v is None or v == [],
    "tool_choice": lambda v: v is None or v == "none",
    "function_call": lambda v: v is None or v == "none",
    "audio": lambda v: v is None,
    "prediction": lambda v: v is None,
    "web_search_options": lambda v: v is None,
    "verbosity": lambda v: v is None,
}
_KNOWN = frozenset(ChatRequest.model_fields)


def invalid(message: str, param: str | None, code: str | None = None) -> ProtocolError:
    return ProtocolError(code or "invalid_request", message, status=400, param=param)


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[TextPart]") or part.startswith(("literal[", "function-")):
            continue  # union members, not fields
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def _check_messages(raw: Any) -> None:
    """Clear answers for what a generic validation error would say badly: tool messages,
    image/audio parts, names and tool calls."""
    if not isinstance(raw, list):
        return
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        if role in ("tool", "function"):
            raise invalid(
                f"role {role!r} is not supported (no tool calling)", f"messages[{i}].role"
            )
        for key in ("name", "tool_calls", "function_call", "audio"):
            if m.get(key) is not None:
                raise invalid(f"messages[].{key} is not supported", f"messages[{i}].{key}")
        content = m.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise invalid(
                        f"content part type {kind!r} is not supported; only 'text' parts are",
                        f"messages[{i}].content[{j}].type",
                    )


def parse_request(body: Any) -> ChatRequest:
    """A valid ``ChatRequest`` or ``ProtocolError`` 400 naming the offending ``param``."""
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object", None)
    for key, value in body.items():
        if key in _KNOWN:
            continue
        ok = HARMLESS.get(key)
        if ok is None:
            raise invalid(f"unrecognized request argument supplied: {key}", key)
        if not ok(value):
            raise invalid(f"{key}={value!r} is not supported by this gateway", key)
    _check_messages(body.get("messages"))
    known = {k: v for k, v in body.items() if k in _KNOWN}
    try:
        request = ChatRequest.model_validate(known)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise invalid(f"{_param(err['loc'])}: {err['msg']}", _param(err["loc"])) from None
    if request.metadata is not None:
        meta = request.metadata
        if len(meta) > MAX_METADATA_KEYS or any(
            len(k) > 64 or len(v) > 512 for k, v in meta.items()
        ):
            raise invalid(
                "metadata: at most 16 pairs, keys ≤ 64 and values ≤ 512 characters", "metadata"
            )
    if not any(m.role == "user" for m in request.messages):
        raise invalid("messages must hold at least one user message", "messages")
    return request


def text_of(content: str | list[TextPart]) -> str:
    return content if isinstance(content, str) else "".join(p.text for p in content)


def task_input(request: ChatRequest) -> list[dict[str, str]]:
    """The chat input of the task: ``developer`` is a system message, parts are joined."""
    return [
        {"role": "system" if m.role == "developer" else m.role, "content": text_of(m.content)}
        for m in request.messages
    ]


def task_params(request: ChatRequest, route: dict[str, str]) -> dict[str, Any]:
    """The task's params: the route (``provider``/``model``) and the generation settings."""
    params: dict[str, Any] = dict(route)
    limit = request.max_completion_tokens or request.max_tokens
    if limit is not None:
        params["max_tokens"] = limit
    for name in ("temperature", "top_p", "stop", "seed", "reasoning_effort"):
        value = getattr(request, name)
        if value is not None:
            params[name] = value
    if request.user is not None:
        params["x_user"] = request.user
    if request.metadata:
        params["x_metadata"] = dict(request.metadata)
    return params


# task field (as InvalidTask names it) -> OpenAI param
_FIELD_PARAMS = {
    "input": "messages",
    "params.max_tokens": "max_tokens",
    "params.temperature": "temperature",
    "params.top_p": "top_p",
    "params.stop": "stop",
    "params.seed": "seed",
    "params.model": "model",
    "params.provider": "model",
    "params.reasoning_effort": "reasoning_effort",
    "idempotency_key": "Idempotency-Key",
    "priority": "x-aiis-priority",
}


def param_of(field: str) -> str:
    if field.startswith("input"):
        return "messages"
    return _FIELD_PARAMS.get(field, field)
