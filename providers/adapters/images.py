"""Image material: Unsplash ``GET /search/photos`` (``Authorization: Client-ID …``) and Pexels
``GET /v1/search`` (``Authorization: <key>``); the prompt is the search query."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from providers.adapters.base import HttpAdapter, Reply
from providers.errors import InvalidRequest, ProviderError, RateLimited
from providers.transport.wire import read_json, status_error
from providers.types import Image, ProgressSink, ProviderRequest, ProviderResult, Usage

MAX_QUERY_CHARS = 200


def _query(request: ProviderRequest) -> str:
    query = " ".join(request.prompt.split())[:MAX_QUERY_CHARS]
    if not query:
        raise InvalidRequest("image search needs a non-empty prompt")
    return query


def _per_page(request: ProviderRequest, default: int) -> str:
    return str(max(1, min(int(request.params.get("count", default)), 30)))


def _message(body: bytes, status: int) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:120].decode("utf-8", "replace").strip() or f"HTTP {status}"
    if isinstance(data, dict):
        errors = data.get("errors")
        if isinstance(errors, list) and errors:
            return "; ".join(str(e) for e in errors)
        if data.get("error"):
            return str(data["error"])
    return f"HTTP {status}"


class _ImageAdapter(HttpAdapter):
    kinds = frozenset({"image"})
    path: str

    def _auth(self) -> dict[str, str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _images(self, data: Mapping[str, Any]) -> list[Image]:  # pragma: no cover - abstract
        raise NotImplementedError

    async def call(self, request: ProviderRequest, model: str, sink: ProgressSink) -> Reply:
        params = {
            "query": _query(request),
            "per_page": _per_page(request, self.settings.images_per_request),
        }
        if "orientation" in request.params:
            params["orientation"] = str(request.params["orientation"])

        async def read(response: httpx.Response) -> ProviderResult:
            data = await read_json(response, self.name)
            return ProviderResult(
                provider=self.name,
                model=model,
                images=tuple(self._images(data)),
                usage=Usage(),
                finish_reason="stop",
            )

        result, exhausted = await self._exchange(
            request,
            "GET",
            self.path,
            headers={**self._auth(), "accept": "application/json"},
            params=params,
            on_ok=read,
        )
        return Reply(result, exhausted)


class UnsplashAdapter(_ImageAdapter):
    name = "unsplash"
    path = "search/photos"

    def _auth(self) -> dict[str, str]:
        return {"authorization": f"Client-ID {self._key()}", "accept-version": "v1"}

    def _images(self, data: Mapping[str, Any]) -> list[Image]:
        return [
            Image(
                url=str(p["urls"]["regular"]),
                width=p.get("width"),
                height=p.get("height"),
                author=(p.get("user") or {}).get("name"),
                source_url=(p.get("links") or {}).get("html"),
                description=p.get("description") or p.get("alt_description"),
            )
            for p in data["results"]
        ]

    def error_from(
        self, status: int, headers: Mapping[str, str], body: bytes, retry_after: float | None
    ) -> ProviderError:
        message = self._clean(_message(body, status))
        # Unsplash signals an exhausted hourly budget with 403 and X-Ratelimit-Remaining: 0
        if status == 403 and headers.get("x-ratelimit-remaining") == "0":
            return RateLimited(
                f"{self.name}: {message}",
                provider=self.name,
                status=status,
                retry_after=retry_after or 3600.0,
            )
        return status_error(self.name, status, message, retry_after)


class PexelsAdapter(_ImageAdapter):
    name = "pexels"
    path = "v1/search"

    def _auth(self) -> dict[str, str]:
        return {"authorization": self._key()}

    def _images(self, data: Mapping[str, Any]) -> list[Image]:
        return [
            Image(
                url=str(p["src"]["large"]),
                width=p.get("width"),
                height=p.get("height"),
                author=p.get("photographer"),
                source_url=p.get("url"),
                description=p.get("alt") or None,
            )
            for p in data["photos"]
        ]

    def error_from(
        self, status: int, headers: Mapping[str, str], body: bytes, retry_after: float | None
    ) -> ProviderError:
        if status == 429 and retry_after is None:
            reset = headers.get("x-ratelimit-reset")
            if reset and reset.isdigit():
                retry_after = max(0.0, int(reset) - time.time())
        return status_error(self.name, status, self._clean(_message(body, status)), retry_after)
