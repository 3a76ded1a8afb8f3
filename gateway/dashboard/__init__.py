"""The dashboard: one static HTML page; everything live arrives over the WebSocket."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def page() -> bytes:
    return (resources.files("gateway.dashboard") / "index.html").read_bytes()


@cache
def opsview_js() -> bytes:
    """The operator panels (task search, timeline, dead letters), loaded by the page."""
    return (resources.files("gateway.dashboard") / "opsview.js").read_bytes()
