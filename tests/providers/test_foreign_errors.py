"""No ``httpx.*`` or ``h2.*`` exception escapes ``providers/``: whatever the URL parser or the
transport raises reaches the caller as a ``ProviderError`` chained (``from``) to it."""

from __future__ import annotations

import socket

import h2.exceptions
import httpx
import pytest
from redis.asyncio.cluster import RedisCluster

from providers.config import ProviderSettings
from providers.errors import InvalidRequest, NetworkError, ProviderError
from providers.factory import build_router
from providers.types import Kind, ProviderRequest
from tests.providers.conftest import RecordingSink

KIND = {"gemini": "text", "openai": "text", "anthropic": "text", "pexels": "image"}


def _request(kind: Kind, **params: object) -> ProviderRequest:
    return ProviderRequest("task-1", "tenant-a", kind, prompt="a cat", params=params)


async def test_a_model_the_url_cannot_hold_is_an_invalid_request(
    settings: ProviderSettings,
) -> None:
    """A pinned model with a control character makes httpx refuse the URL (InvalidURL): the
    router raises InvalidRequest chained to it, not the httpx exception."""
    router = build_router(None, settings)
    try:
        with pytest.raises(ProviderError) as info:
            await router.process(_request("text", model="gemini-\x01"), RecordingSink())
    finally:
        await router.aclose()
    assert isinstance(info.value, InvalidRequest)
    assert isinstance(info.value.__cause__, httpx.InvalidURL)


@pytest.mark.parametrize("provider", sorted(KIND))
@pytest.mark.parametrize(
    "raised",
    [
        h2.exceptions.ProtocolError("invalid frame"),
        h2.exceptions.StreamClosedError(1),
        h2.exceptions.FlowControlError("window exceeded"),
        httpx.StreamConsumed(),
        httpx.RemoteProtocolError("peer closed"),
    ],
    ids=type,
)
async def test_transport_exceptions_become_network_errors(
    settings: ProviderSettings, provider: str, raised: Exception
) -> None:
    """An h2 or httpx exception raised by the transport under any adapter surfaces from the
    router as a retryable NetworkError whose cause is that exception."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    router = build_router(None, settings, transport=httpx.MockTransport(handler))
    try:
        with pytest.raises(ProviderError) as info:
            await router.process(
                _request(KIND[provider], provider=provider),  # type: ignore[arg-type]
                RecordingSink(),
            )
    finally:
        await router.aclose()
    assert isinstance(info.value, NetworkError)
    assert info.value.__cause__ is raised


async def test_an_unreachable_cluster_redis_fails_open(settings: ProviderSettings) -> None:
    """With its Redis Cluster unreachable (redis-py raises RedisClusterException, which is no
    RedisError) the breaker and the rate limiter fail open as they do for a lost standalone
    Redis: the call succeeds and no redis exception leaves the router."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    cluster = RedisCluster(host="127.0.0.1", port=port)
    router = build_router(cluster, settings)  # type: ignore[arg-type]
    try:
        result = await router.process(_request("text", provider="openai"), RecordingSink())
    finally:
        await router.aclose()
        await cluster.aclose()
    assert result.text
