"""The TaskProcessor the engine calls: walks the kind's fallback chain, each attempt under the
provider's shared rate limit and circuit breaker, prices the result, and reports every provider
call, skip, fallback and breaker transition through the sink.

Falls back on retryable errors (an open circuit included), on AuthFailed and on
InsufficientCredits (another provider's account can still serve the task); never on
InvalidRequest, which is raised at once, nor on an exception of our own code in an adapter,
raised at once as ``OwnFailure``. When every provider failed it raises the last retryable error
(so the engine retries later), or the last error when none was retryable.

Each provider call is reported once, after it ended: ``notice("attempt", {provider, model,
index, attempt, outcome: "ok"|"error", latency_ms, error_class?, message?, retry_after?,
usage?, cost_usd?})`` — provider health and alerts count these. A provider not called (its
circuit open, no rate-limit slot within the wait budget, every key confirmed bad) is
``notice("skipped", {…, reason: "circuit_open"|"rate_limited"|"no_usable_key",
retry_after})``, never a call. Known key values are scrubbed from deltas, results and messages
before they leave.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from providers.adapters.base import Reply
from providers.breaker import Breakers
from providers.credentials.scrub import DeltaScrubber, Scrubber
from providers.errors import CircuitOpen, InvalidRequest, OwnFailure, ProviderError, RateLimited
from providers.pricing import PriceTable
from providers.ratelimit import RateLimiter, estimate_tokens
from providers.types import Kind, ProgressSink, ProviderRequest, ProviderResult

if TYPE_CHECKING:
    from providers.credentials.keyring import Keyring

log = logging.getLogger(__name__)

_MODEL_PREFIXES = (
    ("gemini", "gemini"),
    ("models/gemini", "gemini"),
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("chatgpt", "openai"),
    ("claude", "anthropic"),
)


class Adapter(Protocol):
    """What the router needs of an adapter (``providers.adapters.base.HttpAdapter`` and fakes)."""

    @property
    def name(self) -> str: ...

    @property
    def kinds(self) -> frozenset[str]: ...

    @property
    def default_model(self) -> str: ...

    async def call(self, request: ProviderRequest, model: str, sink: ProgressSink) -> Reply: ...

    async def aclose(self) -> None: ...


class _AttemptSink:
    """Forwards deltas (scrubbed of known keys) and remembers how much partial output this
    attempt produced and when the provider was actually called."""

    def __init__(self, sink: ProgressSink, scrub: DeltaScrubber | None) -> None:
        self.sink = sink
        self.scrub = scrub
        self.deltas = 0
        self.chars = 0
        self.called_at: float | None = None  # monotonic; None: the provider was not called

    def delta(self, text: str) -> None:
        self.deltas += 1
        self.chars += len(text)
        if self.scrub is not None:
            text = self.scrub.feed(text)
            if not text:
                return
        self.sink.delta(text)

    def flush(self) -> None:
        if self.scrub is not None:
            rest = self.scrub.flush()
            if rest:
                self.sink.delta(rest)

    def notice(self, kind: str, data: Mapping[str, Any]) -> None:
        self.sink.notice(kind, data)


def provider_for_model(model: str) -> str | None:
    for prefix, provider in _MODEL_PREFIXES:
        if model.startswith(prefix):
            return provider
    return None


def _input_text(request: ProviderRequest) -> str:
    if request.kind == "chat":
        return "".join(m.content for m in request.messages)
    return request.prompt


class Router:
    """Fallback chains over adapters, with optional shared breakers, limiter and prices."""

    def __init__(
        self,
        adapters: Mapping[str, Adapter],
        chains: Mapping[Kind, Sequence[str]],
        *,
        breakers: Breakers | None = None,
        limiter: RateLimiter | None = None,
        prices: PriceTable | None = None,
        max_rate_wait_s: float = 30.0,
    ) -> None:
        self.adapters = dict(adapters)
        self.chains = {
            kind: [p for p in chain if p in self.adapters] for kind, chain in chains.items()
        }
        self.breakers = breakers
        self.limiter = limiter
        self.prices = prices or PriceTable.load()
        self.max_rate_wait_s = max_rate_wait_s
        self.keyring: Keyring | None = None  # set by providers.factory (key rotation)

    def plan(self, request: ProviderRequest) -> list[tuple[str, str | None]]:
        """The (provider, model) pairs to try, in order; a pinned provider or model is alone."""
        pinned = request.params.get("provider")
        model = request.params.get("model")
        if model and not pinned:
            pinned = provider_for_model(str(model))
            if pinned is None:
                raise InvalidRequest(f"cannot tell the provider of model {model!r}; pin 'provider'")
        if pinned:
            adapter = self.adapters.get(str(pinned))
            if adapter is None:
                raise InvalidRequest(f"provider {pinned!r} is not configured")
            if request.kind not in adapter.kinds:
                raise InvalidRequest(f"provider {pinned!r} does not serve {request.kind!r} tasks")
            return [(str(pinned), str(model) if model else None)]
        chain = self.chains.get(request.kind) or []
        if not chain:
            raise InvalidRequest(f"no provider configured for {request.kind!r} tasks")
        return [(name, None) for name in chain]

    def _scrubber(self) -> Scrubber | None:
        if self.keyring is None:
            return None
        scrubber = self.keyring.scrubber()
        return scrubber if scrubber else None

    async def process(self, request: ProviderRequest, sink: ProgressSink) -> ProviderResult:
        plan = self.plan(request)
        scrubber = self._scrubber()
        errors: list[ProviderError] = []
        for index, (name, pinned_model) in enumerate(plan):
            adapter = self.adapters[name]
            model = pinned_model or adapter.default_model
            call = {"provider": name, "model": model, "index": index, "attempt": request.attempt}
            attempt = _AttemptSink(sink, scrubber.stream() if scrubber is not None else None)
            try:
                result = await self._call(adapter, request, model, attempt)
            except ProviderError as exc:
                attempt.flush()
                if scrubber is not None:
                    exc.message = scrubber.text(exc.message)
                    exc.args = (exc.message,)
                if isinstance(exc, OwnFailure):
                    log.error("task %s: %s", request.task_id, exc.message)
                    raise
                self._report(sink, call, attempt, exc)
                if isinstance(exc, InvalidRequest):
                    raise
                errors.append(exc)
                if attempt.deltas:
                    sink.notice(
                        "partial_discarded",
                        {"provider": name, "deltas": attempt.deltas, "chars": attempt.chars},
                    )
                log.info("provider %s failed: %s (%s)", name, exc.error_class, exc.message)
                if index + 1 < len(plan):
                    sink.notice(
                        "fallback",
                        {
                            "from": name,
                            "to": plan[index + 1][0],
                            "error_class": exc.error_class,
                            "message": exc.message,
                            "retry_after": exc.retry_after,
                        },
                    )
            else:
                attempt.flush()
                if scrubber is not None:
                    result = _scrubbed(result, scrubber)
                self._report(sink, call, attempt, None)
                return result
        retryable = [e for e in errors if e.retryable]
        final = retryable[-1] if retryable else errors[-1]
        waits = [e.retry_after for e in retryable if e.retry_after is not None]
        if retryable and waits and len(waits) == len(retryable):
            # the engine may come back once the first provider is expected to be available
            final.retry_after = min(waits)
        raise final

    def _report(
        self,
        sink: ProgressSink,
        call: dict[str, Any],
        attempt: _AttemptSink,
        exc: ProviderError | None,
    ) -> None:
        """One notice per provider call with its outcome and latency, or per skip."""
        if attempt.called_at is None or (exc is not None and not exc.sent):
            if exc is not None:
                reason = (
                    "circuit_open"
                    if isinstance(exc, CircuitOpen)
                    else "rate_limited"
                    if isinstance(exc, RateLimited)
                    else "no_usable_key"
                )
                sink.notice("skipped", {**call, "reason": reason, "retry_after": exc.retry_after})
            return
        latency_ms = int((time.monotonic() - attempt.called_at) * 1000)
        if exc is None:
            sink.notice("attempt", {**call, "outcome": "ok", "latency_ms": latency_ms})
            return
        detail: dict[str, Any] = {
            **call,
            "outcome": "error",
            "latency_ms": latency_ms,
            "error_class": exc.error_class,
            "message": exc.message,
            "retry_after": exc.retry_after,
        }
        if exc.usage is not None:  # the provider reported (and bills) usage before failing
            u = exc.usage
            detail["usage"] = {
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
                "cached_tokens": u.cached_tokens,
                "reasoning_tokens": u.reasoning_tokens,
            }
            detail["cost_usd"] = self.prices.cost(str(call["model"]), u)
        sink.notice("attempt", detail)

    async def _call(
        self, adapter: Adapter, request: ProviderRequest, model: str, sink: _AttemptSink
    ) -> ProviderResult:
        name = adapter.name
        if self.limiter is not None and self.limiter.limits_calls(name):
            budget = self.max_rate_wait_s
            if request.deadline is not None:
                budget = min(budget, request.deadline - time.time())
            tokens = estimate_tokens(_input_text(request)) if request.kind != "image" else 0
            await self.limiter.acquire(name, tokens=tokens, max_wait=budget)

        async def attempt() -> Reply:
            sink.called_at = time.monotonic()
            try:
                return await adapter.call(request, model, sink)
            except RateLimited as exc:
                if self.limiter is not None and exc.retry_after:
                    await self.limiter.block_until(name, time.time() + exc.retry_after)
                raise
            except ProviderError:
                raise
            except Exception as exc:
                # our own code failed (e.g. int("abc") building the body): not the provider's
                # failure — the breaker lets it through uncounted, the engine does not retry it
                raise OwnFailure(
                    f"{name} adapter: internal error ({type(exc).__name__}); not retried"
                ) from exc

        if self.breakers is not None:
            transitions: list[tuple[str, dict[str, Any]]] = []
            try:
                reply = await self.breakers.call(name, attempt, transitions)
            finally:
                for state, info in transitions:
                    sink.notice(f"circuit_{state}", {"provider": name, **info})
        else:
            reply = await attempt()
        result = reply.result
        if self.limiter is not None:
            if reply.exhausted_until is not None:
                await self.limiter.block_until(name, reply.exhausted_until)
            if request.kind != "image":
                used = result.usage.input_tokens + result.usage.output_tokens
                self.limiter.charge(name, used - estimate_tokens(_input_text(request)))
        requests = 1 if request.kind == "image" else 0
        # the answer names a dated version (gpt-5-mini-2025-08-07); the table may know either
        priced = result.model if self.prices.lookup(result.model) else model
        return replace(result, cost_usd=self.prices.cost(priced, result.usage, requests=requests))

    async def aclose(self) -> None:
        for adapter in self.adapters.values():
            await adapter.aclose()


def _scrubbed(result: ProviderResult, scrubber: Scrubber) -> ProviderResult:
    text = scrubber.text(result.text) if result.text is not None else None
    if not result.images:
        return result if text == result.text else replace(result, text=text)
    images = tuple(
        replace(
            i,
            url=scrubber.text(i.url),
            description=scrubber.text(i.description) if i.description else i.description,
            author=scrubber.text(i.author) if i.author else i.author,
            source_url=scrubber.text(i.source_url) if i.source_url else i.source_url,
        )
        for i in result.images
    )
    return replace(result, text=text, images=images)
