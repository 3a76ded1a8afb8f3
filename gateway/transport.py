"""uvicorn's ``websockets-sansio`` protocol (the ``websockets`` library's sans-I/O
``ServerProtocol``) with one addition: the ASGI scope carries an ``aiis.abort`` extension so the
app can drop a TCP connection whose peer reads nothing — not even a close frame. Without it a
stuck peer holds its socket and write buffer until the kernel gives up.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

ABORT_EXTENSION = "aiis.abort"


class AbortableWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)
        if scope is not None:  # the app task is scheduled, not started: it sees this
            scope["extensions"][ABORT_EXTENSION] = {"abort": self.transport.abort}

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        # the close frame may sit behind a full buffer: drop the connection after the grace
        self.loop.call_later(5.0, self.transport.abort)
