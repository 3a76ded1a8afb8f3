"""Gateway errors. Engine errors are translated where a request is answered.

GatewayError
├── GatewayConfigError   bad token configuration, or no tokens on a non-loopback address
├── HeadRefused          a request head the HTTP protocol refuses (too large, not one Host): 400
├── ProtocolError        a client request cannot be served; ``code`` goes on the wire
└── WatchError           ``aiis watch`` cannot follow the gateway (refused, closed, gave up)
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Root of every error the gateway raises."""


class GatewayConfigError(GatewayError):
    pass


class HeadRefused(GatewayError):
    """Raised from an HTTP parser callback (``gateway/transport.py``): httptools reports it as
    a parser error, and uvicorn answers 400 and closes the connection."""


class ProtocolError(GatewayError):
    """An answer to one client request: ``{"op":"error","code":…,"message":…}`` or HTTP 4xx."""

    def __init__(self, code: str, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.extra = extra


class WatchError(GatewayError):
    """``aiis watch`` lost the gateway for good; the message says why."""
