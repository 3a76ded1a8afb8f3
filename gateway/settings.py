"""Gateway limits (``AIIS_GATEWAY_*``), parsed once from the environment. Host and port live in
the engine's ``Settings`` (``AIIS_GATEWAY_HOST``/``AIIS_GATEWAY_PORT``, DESIGN.md §4).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AIIS_GATEWAY_", extra="ignore", frozen=True, populate_by_name=True
    )

    # auth: "sha256:<hex>=tenant,…" and/or a file with one "sha256:<hex>=tenant" per line;
    # tenant "*" is an operator token (every tenant). Neither set: open mode, loopback only.
    tokens: str = ""
    tokens_file: Path | None = None
    # /metrics: the bearer token a scraper presents (the token, or `sha256:<hex>` of it);
    # operator tokens may scrape too. Unset: operator tokens only, or anyone in open mode
    metrics_token: str | None = Field(None, validation_alias="AIIS_METRICS_TOKEN")

    # browsers: origins (scheme://host[:port], comma-separated) that may open a WebSocket or
    # send a request besides the gateway's own; "*" allows every origin. In open mode the
    # Host header must also name the bound address (DNS rebinding), see docs/security.md
    allowed_origins: str = ""

    # sockets (HTTP and WebSocket together): over the cap a new one is closed at once; a
    # request's headers must arrive within header_timeout_s and its body within body_timeout_s
    max_sockets: int = Field(12_000, ge=1, le=1_000_000)
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    body_timeout_s: float = Field(30.0, gt=0, le=3600)
    keep_alive_timeout_s: int = Field(5, ge=1, le=3600)  # idle between HTTP requests

    # connections
    max_connections: int = Field(10_000, ge=1, le=1_000_000)
    max_subscriptions: int = Field(100, ge=1, le=100_000)  # per connection
    auth_timeout_s: float = Field(10.0, gt=0, le=3600)  # an anonymous connection must auth
    ping_interval_s: float = Field(20.0, gt=0, le=3600)
    ping_timeout_s: float = Field(20.0, gt=0, le=3600)
    close_timeout_s: float = Field(5.0, gt=0, le=600)  # then the TCP connection is aborted

    # messages
    max_message_bytes: int = Field(256 * 1024, ge=1024, le=64 * 1024 * 1024)  # error, keep conn
    max_frame_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)  # close 1009
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)  # HTTP POST

    # per-subscriber send buffer: over either limit the subscriber is closed with 1013
    send_queue: int = Field(1024, ge=1, le=1_000_000)
    # how often a WebSocket tenant subscription hears where the hub is in every partition
    # (`cursors` frames: a quiet partition's resume point follows the log)
    cursors_interval_s: float = Field(10.0, gt=0, le=3600)
    send_queue_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)

    # the shared log reader
    read_count: int = Field(1000, ge=1, le=100_000)  # entries per XREAD
    read_block_ms: int = Field(1000, ge=1, le=60_000)
    replay_chunk: int = Field(1000, ge=1, le=100_000)  # entries per XRANGE during catch-up
    # the newest entries of each partition the reader dispatched, kept in memory: a subscriber
    # resuming within them (an OpenAI request right after its submit, a WebSocket reconnect)
    # is replayed from memory, without a Redis round trip; 0 turns it off. Bounded in bytes
    # too (the entries' field sizes), so large prompts cannot grow it past recent_bytes
    recent_entries: int = Field(4096, ge=0, le=1_000_000)
    recent_bytes: int = Field(16 * 1024 * 1024, ge=0, le=16 * 1024 * 1024 * 1024)

    # dashboard and SSE
    stats_interval_s: float = Field(1.0, gt=0, le=3600)
    recent_tasks: int = Field(50, ge=1, le=10_000)  # per tenant, shown on the dashboard
    recent_tracked: int = Field(5000, ge=1, le=1_000_000)  # tasks remembered for that list
    sse_keepalive_s: float = Field(15.0, gt=0, le=3600)
    # OpenAI route: a task shared through an Idempotency-Key whose last follower left early is
    # cancelled this long after, unless a retry with the key joined it meanwhile
    shared_cancel_grace_s: float = Field(2.0, ge=0, le=600)
    shutdown_grace_s: float = Field(5.0, ge=0, le=600)

    # processes behind the same HTTP and gRPC ports (SO_REUSEPORT: the kernel spreads new
    # connections over them), each with its own log reader; see docs/gateway.md
    processes: int = Field(1, ge=1, le=64)
    # set by `aiis gateway --processes N` for each of its children, not by hand: bind with
    # SO_REUSEPORT, the child's index, and where the children share /metrics snapshots
    reuse_port: bool = False
    process_index: int | None = Field(None, ge=0, le=63)
    metrics_dir: Path | None = None

    # `aiis watch` (a client of the gateway): the token it presents
    client_token: str | None = None
