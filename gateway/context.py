"""What every request handler of one gateway shares: engine client, hub, auth, counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.client import Client
from engine.operations.audit import AuditLog
from engine.settings import Settings
from gateway.auth import Authenticator
from gateway.hub import Hub
from gateway.metrics import Histogram, overhead_histogram
from gateway.settings import GatewaySettings
from gateway.stats import Stats
from gateway.transport import SocketLimits

if TYPE_CHECKING:
    from gateway.openai.catalog import Catalog
    from gateway.processes import SharedMetrics


@dataclass(slots=True)
class Counters:
    """Monotonic counts exported on /metrics."""

    connections_total: int = 0
    slow_closed: int = 0
    submits: Counter[tuple[str, str]] = field(default_factory=Counter)  # (transport, outcome)
    errors: Counter[str] = field(default_factory=Counter)  # protocol/HTTP error codes
    rejected: Counter[str] = field(default_factory=Counter)  # refused connections by reason
    overhead: Histogram = field(default_factory=overhead_histogram)  # OpenAI-compatible API


@dataclass(slots=True)
class Context:
    settings: Settings
    gw: GatewaySettings
    client: Client
    hub: Hub
    auth: Authenticator
    stats: Stats
    counters: Counters = field(default_factory=Counters)
    sessions: set[Any] = field(default_factory=set)  # open WebSocket sessions
    connections: int = 0  # open WebSocket connections
    sse_streams: int = 0
    sse_outboxes: set[Any] = field(default_factory=set)  # open SSE streams' outboxes
    shutting_down: bool = False
    audit: AuditLog | None = None  # submit and cancel records (who: tenant + token id)
    limits: SocketLimits | None = None  # the HTTP server's socket cap and header timeout
    # `aiis gateway --processes N`: the siblings' /metrics snapshots (gateway.processes)
    shared_metrics: SharedMetrics | None = None
    catalog: Catalog | None = None  # the models the OpenAI-compatible API routes
    pending: set[Any] = field(default_factory=set)  # background tasks kept alive until done
