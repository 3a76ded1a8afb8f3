"""The documented task params, checked at the door (docs/providers.md, docs/security.md).

A bad value fails here, with the field named, instead of inside a provider adapter where it
would be retried and counted against the provider's shared circuit breaker for every tenant.
Unknown keys are refused too (a typo is not silently ignored); keys starting with ``x_`` are
the caller's own and pass unchecked (they reach the provider request, never a provider's body).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.errors import InvalidTask

MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 200
MAX_SCRIPT_STEPS = 100
EXTENSION_PREFIX = "x_"


class TaskParams(BaseModel):
    """Every param a task may carry; each optional, strictly typed and bounded."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # routing
    # identifiers, not free text: a shape that cannot carry an e-mail or a sentence
    provider: str | None = Field(None, pattern=r"^[a-z0-9_-]{1,32}$")
    model: str | None = Field(None, pattern=r"^[A-Za-z0-9._:/-]{1,128}$")
    # generation (mapped per provider)
    system: str | None = Field(None, max_length=10_000_000)
    max_tokens: int | None = Field(None, ge=1, le=200_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=1, le=1000)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    stream: bool | None = None
    # image search
    count: int | None = Field(None, ge=1, le=30)
    orientation: Literal["landscape", "portrait", "squarish", "square"] | None = None
    # engine
    cache: bool | None = None
    callback_url: str | None = Field(None, max_length=2048)
    template: str | None = Field(None, min_length=1, max_length=128)
    template_version: int | None = Field(None, ge=1)
    variables: dict[str, Any] | None = None
    script: list[str] | None = Field(None, max_length=MAX_SCRIPT_STEPS)  # the scripted provider


def _name(loc: tuple[int | str, ...]) -> str:
    return f"params.{loc[0]}" if loc else "params"  # the key; deeper parts name union members


def validate_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` checked against ``TaskParams`` (``x_*`` keys aside); ``stop`` given as one
    string becomes a one-item list. Raises ``InvalidTask`` naming the first bad field."""
    if not params:
        return params
    documented = {k: v for k, v in params.items() if not k.startswith(EXTENSION_PREFIX)}
    try:
        TaskParams.model_validate(documented)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "extra_forbidden":
            raise InvalidTask(
                _name(err["loc"]),
                f"unknown param; documented: {sorted(TaskParams.model_fields)} (or x_*)",
            ) from None
        raise InvalidTask(_name(err["loc"]), err["msg"]) from None
    stop = params.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if len(stops) > MAX_STOP_SEQUENCES or any(len(s) > MAX_STOP_CHARS for s in stops):
            raise InvalidTask(
                "params.stop",
                f"at most {MAX_STOP_SEQUENCES} sequences of at most {MAX_STOP_CHARS} characters",
            )
        if isinstance(stop, str):
            params = {**params, "stop": stops}
    return params
