"""Browser-facing checks made before any route runs (an ASGI middleware, ``Guard``).

A web page can make a browser send requests to a loopback gateway: a cross-site WebSocket is
not covered by the same-origin policy, a ``text/plain`` form POST needs no CORS preflight, and a
DNS-rebound name (``evil.example`` resolving to 127.0.0.1) makes the page same-origin with the
gateway. So, on every HTTP request and WebSocket upgrade:

- an ``Origin`` header must be the gateway's own origin (its netloc equals the ``Host``
  header) or one of ``AIIS_GATEWAY_ALLOWED_ORIGINS`` (``*`` allows any); else 403
  ``forbidden_origin``. Non-browser clients send no ``Origin`` and are not affected;
- in open mode (no tokens) the ``Host`` header must name the bound address: the bound host,
  ``localhost`` or a loopback IP, with the bound port; else 403 ``forbidden_host``.

``POST`` bodies must be ``application/json`` (415, checked where bodies are read, ``http``).
See docs/security.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway.errors import GatewayConfigError

ANY_ORIGIN = "*"


def normalise_origin(text: str) -> str:
    """``scheme://host[:port]`` lower-cased, default ports dropped; ``""`` if not an origin."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[parts.scheme]:
        host = f"{host}:{port}"
    return f"{parts.scheme}://{host}"


def parse_origins(text: str) -> frozenset[str]:
    """The allowed origins of ``AIIS_GATEWAY_ALLOWED_ORIGINS`` (comma-separated)."""
    out = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        origin = ANY_ORIGIN if item == ANY_ORIGIN else normalise_origin(item)
        if not origin:
            raise GatewayConfigError(
                f"AIIS_GATEWAY_ALLOWED_ORIGINS: {item!r} is not scheme://host[:port]"
            )
        out.add(origin)
    return frozenset(out)


def _split_host(host: str) -> tuple[str, int | None]:
    """(hostname, port) of a ``Host`` header value; port ``None`` when absent or bad."""
    try:
        parts = urlsplit("//" + host)
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return "", -1


def _loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Policy:
    """What ``Guard`` enforces; ``port`` is the bound port (0 until the socket is bound)."""

    allowed_origins: frozenset[str]
    open_mode: bool
    host: str
    port: int

    def host_ok(self, host: str | None) -> bool:
        if not self.open_mode:
            return True
        if not host:
            return False
        name, port = _split_host(host)
        if name != self.host.lower().strip("[]") and not _loopback(name):
            return False
        return (port if port is not None else 80) == self.port

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        if origin is None or ANY_ORIGIN in self.allowed_origins:
            return True
        normal = normalise_origin(origin)
        if not normal:  # "null" (sandboxed frames, file://) and garbage
            return False
        if normal in self.allowed_origins:
            return True
        # the gateway's own pages: the origin's host[:port] is the Host header. The scheme is
        # not compared: behind a TLS-terminating proxy the page is https, the request http
        own = (host or "").strip().lower().removesuffix(":80").removesuffix(":443")
        return bool(own) and normal.split("://", 1)[1] == own

    def refusal(self, headers: dict[str, str]) -> tuple[str, str] | None:
        """(code, message) when the request must be refused, else ``None``."""
        host = headers.get("host")
        if not self.host_ok(host):
            return "forbidden_host", "the Host header does not name this gateway"
        if not self.origin_ok(headers.get("origin"), host):
            return "forbidden_origin", "cross-site request refused (AIIS_GATEWAY_ALLOWED_ORIGINS)"
        return None


class Guard:
    """ASGI middleware applying ``policy()`` to HTTP requests and WebSocket upgrades;
    ``refused(code)`` is called for each refusal (the gateway counts them)."""

    def __init__(
        self, app: ASGIApp, policy: Callable[[], Policy], refused: Callable[[str], None]
    ) -> None:
        self.app = app
        self.policy = policy
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.policy().refusal(headers)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        code, message = refusal
        self.refused(code)
        body = orjson.dumps({"error": {"code": code, "message": message}})
        response = Response(body, 403, {"Vary": "Origin"}, media_type="application/json")
        if scope["type"] == "websocket":
            await WebSocket(scope, receive, send).send_denial_response(response)
        else:
            await response(scope, receive, send)
