"""What every HTTP adapter shares: the call frame (deadline, timeouts, error translation) and the
``Reply`` it hands to the router."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import h2.exceptions
import httpx
from pydantic import SecretStr

from providers.config import ProviderConfig, ProviderSettings
from providers.errors import InvalidRequest, NetworkError, ProviderError, ProviderTimeout
from providers.headers import exhausted_until, provider_hint
from providers.transport.wire import ClientPool, redact, remaining, transport_error
from providers.types import ChatMessage, ProgressSink, ProviderRequest, ProviderResult

T = TypeVar("T")

# the key of the current call, set by ``providers.credentials.keyring`` (rotation);
# else the config's key
KEY_IN_USE: contextvars.ContextVar[SecretStr | None] = contextvars.ContextVar(
    "aiis_key_in_use", default=None
)

FINISH_STOP, FINISH_LENGTH, FINISH_FILTER = "stop", "length", "content_filter"


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful call: the result (cost not yet priced) and, when the provider's headers say
    the budget is spent, the unix time it comes back."""

    result: ProviderResult
    exhausted_until: float | None = None


class HttpAdapter:
    """Base of the five adapters; subclasses implement ``call`` and ``error_from``."""

    name: ClassVar[str]
    kinds: ClassVar[frozenset[str]]

    def __init__(
        self,
        config: ProviderConfig,
        settings: ProviderSettings,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.pool = ClientPool(config, settings, transport)

    @property
    def default_model(self) -> str:
        return self.config.model

    def _key(self) -> str:
        key = KEY_IN_USE.get() or self.config.api_key
        return key.get_secret_value() if key is not None else ""

    def _clean(self, text: str) -> str:
        return redact(text, [self._key()])

    async def call(
        self, request: ProviderRequest, model: str, sink: ProgressSink
    ) -> Reply:  # pragma: no cover - abstract
        raise NotImplementedError

    def error_from(
        self, status: int, headers: Mapping[str, str], body: bytes, retry_after: float | None
    ) -> ProviderError:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _exchange(
        self,
        request: ProviderRequest,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        on_ok: Callable[[httpx.Response], Awaitable[T]],
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> tuple[T, float | None]:
        """One HTTP exchange within the call budget: ``on_ok`` reads a 2xx response; anything
        else becomes a ProviderError chained to its cause. Returns ``on_ok``'s value and the
        provider-announced exhaustion time."""
        budget = remaining(request.deadline, self.settings.call_timeout_s)
        if budget <= 0:
            raise ProviderTimeout(f"{self.name}: task deadline already passed", provider=self.name)
        try:
            async with asyncio.timeout(budget):
                async with self.pool.stream(
                    method, url, headers=headers, json=json, params=params
                ) as response:
                    now = time.time()
                    if response.status_code >= 400:
                        body = await response.aread()
                        retry_after = provider_hint(response.headers, now)
                        raise self.error_from(
                            response.status_code, response.headers, body, retry_after
                        )
                    value = await on_ok(response)
                    return value, exhausted_until(self.name, response.headers, now)
        except ProviderError:
            raise
        except TimeoutError as exc:
            raise ProviderTimeout(
                f"{self.name}: no complete answer within {budget:.1f}s", provider=self.name
            ) from exc
        except httpx.InvalidURL as exc:  # e.g. a pinned model no URL can hold: retrying won't help
            raise InvalidRequest(
                f"{self.name}: the request makes an invalid URL", provider=self.name
            ) from exc
        except (httpx.HTTPError, httpx.StreamError, h2.exceptions.H2Error, OSError) as exc:
            # h2's own exceptions too: the HTTP/2 transport may let one through
            raise transport_error(exc, self.name) from exc
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            # a 2xx body of the wrong shape: the provider changed or the proxy is broken
            raise NetworkError(
                f"{self.name}: unexpected response shape ({type(exc).__name__})",
                provider=self.name,
            ) from exc

    async def aclose(self) -> None:
        await self.pool.aclose()


def split_system(
    messages: tuple[ChatMessage, ...] | list[ChatMessage],
) -> tuple[str, list[ChatMessage]]:
    """System messages joined into one instruction, and the rest in order."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    return system, [m for m in messages if m.role != "system"]


def conversation(request: ProviderRequest) -> tuple[str, list[ChatMessage]]:
    """The request as (system instruction, turns): text kind is one user turn."""
    if request.kind == "chat":
        return split_system(list(request.messages))
    system = str(request.params.get("system", ""))
    return system, [ChatMessage(role="user", content=request.prompt)]


def max_tokens(request: ProviderRequest, settings: ProviderSettings) -> int:
    value = request.params.get("max_tokens", settings.max_output_tokens)
    return max(1, min(int(value), 200_000))


def wants_stream(request: ProviderRequest) -> bool:
    return bool(request.params.get("stream", True))
