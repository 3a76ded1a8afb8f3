"""Provider error taxonomy. Foreign errors (httpx, h2, SDK bodies) are translated into these at
the adapter boundary and chained with ``raise … from exc``; nothing else leaves ``providers/``.

    ProviderError
    ├── RetryableError            the engine retries (and the router falls back)
    │   ├── RateLimited           429; ``retry_after`` from the provider's headers/body
    │   ├── ProviderTimeout       connect/read timeout, stalled stream       (linear backoff)
    │   ├── NetworkError          connection reset/refused, cut stream, malformed chunk
    │   └── Overloaded            Anthropic 529, 503
    │       └── CircuitOpen       not called: the provider's breaker is open (class "Overloaded")
    ├── FatalError                never retried, never falls back
    │   ├── InvalidRequest        the request itself is wrong
    │   ├── InsufficientCredits   quota or billing exhausted
    │   ├── AuthFailed            401/403: the key is bad (key rotation acts on this)
    │   │   ├── NoUsableKey       every key of the provider was rejected (or none is set)
    │   │   └── KeyRejected       rejected but only suspect so far: retried (docs/security.md)
    │   └── OwnFailure            our own code failed inside an adapter (a bug, a value we could
    │                             not encode): not the provider's failure; never retried, never
    │                             counted by a breaker or as a provider call
    ├── SecretsError              a key source is malformed (names file and line, never content)
    └── SandboxError              inside the provider sandbox only, never from a real call
        ├── BadInput              the sandbox answers the request as invalid
        └── Abort                 the sandbox drops the connection / resets the stream

Only the provider's own failures — ``PROVIDER_FAILURES``: 5xx/overload, timeouts, network —
count toward its circuit breaker; its pacing (429) and our own errors never do.

Messages never contain API keys: adapters build them from status codes and provider error
bodies, never from request headers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from providers.types import Usage


class ProviderError(Exception):
    """Root of every provider failure; ``retryable`` drives the engine's retry table."""

    retryable: bool = False
    # False: raised before any request went out (no usable key): not a provider call
    sent: bool = True
    # usage the provider reported before failing (a stream cut after its usage frame): billed
    usage: Usage | None = None

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.retry_after = retry_after
        self.status = status

    @property
    def error_class(self) -> str:
        return type(self).__name__


class RetryableError(ProviderError):
    retryable = True


class RateLimited(RetryableError):
    """The provider asked us to slow down; ``retry_after`` seconds when it said so."""


class ProviderTimeout(RetryableError):
    """No answer (or no stream progress) within the timeout."""


class NetworkError(RetryableError):
    """Transport failure: refused, reset, cut or malformed stream."""


class Overloaded(RetryableError):
    """The provider is overloaded (Anthropic 529, HTTP 503)."""


class CircuitOpen(Overloaded):
    """The provider was skipped, not called: its circuit is open. Retried like ``Overloaded``
    (the engine's retry table and the events name it so); health counts it as ``skipped_open``,
    not as a call."""

    @property
    def error_class(self) -> str:
        return "Overloaded"


class FatalError(ProviderError):
    retryable = False


class InvalidRequest(FatalError):
    """The request is malformed or refused as such; retrying cannot help."""


class InsufficientCredits(FatalError):
    """Quota, credits or spend limit exhausted."""


class AuthFailed(FatalError):
    """The credentials were rejected."""


class OwnFailure(FatalError):
    """An exception of our own code inside an adapter (e.g. ``int("abc")`` building the body).
    Carries no ``provider``: it is nobody's provider failure."""


PROVIDER_FAILURES: tuple[type[ProviderError], ...] = (ProviderTimeout, NetworkError, Overloaded)
"""What counts toward a provider's circuit breaker (``CircuitOpen`` is never raised by a call)."""


class NoUsableKey(AuthFailed):
    """Every key of the provider has been rejected (or none is configured); nothing was sent."""

    sent = False


class KeyRejected(AuthFailed):
    """The key was rejected, not yet confirmed bad (see ``credentials.keyring``): retried."""

    retryable = True


class SecretsError(ProviderError):
    """A key source is malformed; the message names the file and line, never the content."""


class SandboxError(ProviderError):
    """Control flow of the provider sandbox (``providers.sandbox``), never from a real call."""

    def __init__(self, message: str = "sandbox: request aborted") -> None:
        super().__init__(message, provider="sandbox")


class BadInput(SandboxError):
    """The sandbox answers the request as invalid (the provider's 400)."""


class Abort(SandboxError):
    """Drop the connection (HTTP/1.1) or reset the stream (HTTP/2)."""


ERROR_CLASSES: dict[str, type[ProviderError]] = {
    cls.__name__: cls
    for cls in (
        RateLimited,
        ProviderTimeout,
        NetworkError,
        Overloaded,
        InvalidRequest,
        InsufficientCredits,
        AuthFailed,
        OwnFailure,
    )
}
