"""The dashboard: static files (the page and its charts script); everything live arrives over
the WebSocket."""

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


def charts_script() -> bytes:
    """``charts.js``: the charts, drawn as SVG by our own code (no CDN: works offline)."""
    return (resources.files("gateway.dashboard") / "charts.js").read_bytes()
