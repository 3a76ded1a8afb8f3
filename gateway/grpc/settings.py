"""gRPC server settings (``AIIS_GRPC_*``), parsed once from the environment. Tokens come from
the WebSocket gateway's settings (``AIIS_GATEWAY_TOKENS`` / ``AIIS_GATEWAY_TOKENS_FILE``).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class GrpcSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIIS_GRPC_", extra="ignore", frozen=True)

    enabled: bool = True  # `aiis gateway` starts the gRPC server beside the WebSocket one
    host: str | None = None  # bind address; default AIIS_GATEWAY_HOST
    port: int = Field(50051, ge=0, le=65535)  # 0: any free port

    # per message, both directions; a bigger one fails with RESOURCE_EXHAUSTED
    max_receive_message_bytes: int = Field(4 * MIB, ge=1024, le=256 * MIB)
    max_send_message_bytes: int = Field(4 * MIB, ge=1024, le=256 * MIB)

    # WatchTask streams open at once (each holds one Redis connection while it waits);
    # one more is refused with RESOURCE_EXHAUSTED
    max_watches: int = Field(256, ge=1, le=10_000)
    # ... and per tenant (an operator token counts as one tenant), so one tenant at its cap
    # leaves the rest of max_watches to the others
    max_watches_per_tenant: int = Field(64, ge=1, le=10_000)
    watch_block_ms: int = Field(1000, ge=10, le=60_000)  # one XREAD's wait
    max_concurrent_rpcs: int = Field(10_000, ge=1, le=1_000_000)  # then RESOURCE_EXHAUSTED
    redis_pool: int = Field(64, ge=1, le=10_000)  # connections for unary calls, when owned
    # SubmitTasks items in flight per stream (submitted, reply not yet sent); then the server
    # stops reading that stream and HTTP/2 flow control holds its client back
    stream_window: int = Field(256, ge=1, le=10_000)
    # tasks per SubmitTasks message; more ends the stream with INVALID_ARGUMENT (field `tasks`).
    # A batch bigger than the window is admitted alone, when nothing else is in flight.
    stream_max_batch: int = Field(1000, ge=1, le=10_000)

    shutdown_grace_s: float = Field(5.0, ge=0, le=600)  # for calls in flight, on stop
