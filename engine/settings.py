"""One settings object, parsed once from the environment (``AIIS_*``). Every limit is named and
bounded; nothing else in the engine reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# the deployment's limits: stored in Redis (`aiis config`), the same for every producer; an
# explicit environment value only seeds them (engine.admission.policy)
DEPLOYMENT_LIMITS = ("queue_max_depth", "max_prompt_chars", "max_params_bytes", "max_request_bytes")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIIS_", extra="ignore", frozen=True)

    redis_url: str | None = None

    # OpenTelemetry traces (engine/operations/tracing.py): on when AIIS_TRACING=1 or an OTLP
    # endpoint is set; the exporter itself reads the standard OTEL_* variables
    tracing: bool = False
    otel_endpoint: str | None = Field(None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    otel_traces_endpoint: str | None = Field(
        None, validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )

    @property
    def tracing_on(self) -> bool:
        return bool(self.tracing or self.otel_endpoint or self.otel_traces_endpoint)

    redis_cluster: bool = False  # AIIS_REDIS_URL names a node of a Redis Cluster
    data_dir: Path = Path(".aiis")
    namespace: str = Field("aiis", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    partitions: int = Field(1, ge=1, le=1024)

    # worker
    # auto: the provider router (real keys, else AIIS_SANDBOX_URL); echo; scripted (tests)
    provider: str = Field("auto", pattern=r"^(auto|echo|scripted)$")
    sandbox_url: str | None = None  # point every adapter at a sandbox (set by `aiis serve`)
    # calls in flight per worker process: provider calls are I/O-bound (seconds each), so a
    # process keeps many; the adaptive limit backs off when providers push back (docs/engine.md)
    concurrency: int = Field(256, ge=1, le=20_000)
    # the worker's event loop: auto = uvloop when installed, else asyncio's own
    event_loop: str = Field("auto", pattern=r"^(auto|asyncio|uvloop)$")
    visibility_timeout_s: float = Field(30.0, gt=0.5, le=3600)
    control_interval_s: float = Field(1.0, gt=0.01, le=60)
    max_deliveries: int = Field(5, ge=1, le=100)
    drain_timeout_s: float = Field(30.0, ge=0, le=3600)
    fetch_batch: int = Field(256, ge=1, le=10_000)

    # autoscaling (aiis worker --autoscale MIN:MAX)
    autoscale_interval_s: float = Field(1.0, gt=0, le=60)
    autoscale_grow_after_s: float = Field(1.0, ge=0, le=600)  # oldest waiting task older: grow
    autoscale_idle_s: float = Field(10.0, ge=0, le=3600)  # nothing waiting this long: shrink

    # submit
    queue_max_depth: int = Field(100_000, ge=1, le=100_000_000)
    task_deadline_s: float = Field(900.0, gt=0, le=7 * 86400)
    max_prompt_chars: int = Field(200_000, ge=1, le=10_000_000)
    max_params_bytes: int = Field(16_384, ge=64, le=1_000_000)
    # the providers' default max_tokens (same variable): a budget's estimate of a task's output
    max_output_tokens: int = Field(1024, ge=1, le=200_000)

    # retry (DESIGN.md §1 table)
    retry_base_s: float = Field(1.0, gt=0, le=600)
    retry_max_s: float = Field(300.0, gt=0, le=86_400)
    retry_jitter: float = Field(0.2, ge=0, le=1)

    # retention
    task_retention_s: float = Field(86_400.0, gt=0)
    # finished tasks retained at most (all partitions): beyond it the oldest are forgotten
    # before their retention ends, so Redis memory stays bounded under any traffic
    task_retained_max: int = Field(1_000_000, ge=100, le=1_000_000_000)
    dlq_max_len: int = Field(100_000, ge=1)

    # gateway
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8765, ge=0, le=65535)

    # security and operations (docs/security.md). JSON documents; a bad one is a clear error
    # at start, and `aiis config set` refuses it (running components keep the last good one)
    pii_policy: str = Field("", max_length=100_000)  # "redact" | {"default":…,"tenants":{…}}
    budgets: str = Field("", max_length=100_000)  # {"default_usd": 50, "tenants": {"acme": 5}}
    config_refresh_s: float = Field(5.0, gt=0, le=3600)  # re-read `aiis config set` values
    max_request_bytes: int = Field(1_000_000, ge=1024, le=64_000_000)  # prompt, UTF-8
    max_result_bytes: int = Field(4_000_000, ge=1024, le=256_000_000)  # longer: truncated
    result_offload_bytes: int = Field(64 * 1024, ge=256, le=64_000_000)  # larger: out of line

    # result cache (off unless enabled; a task opts out with params {"cache": false})
    cache: bool = False
    cache_ttl_s: float = Field(3600.0, gt=0, le=30 * 86400)
    cache_max_entries: int = Field(100_000, ge=16, le=100_000_000)

    # task webhooks (params {"callback_url": …}); the secret signs every delivery
    webhook_secret: SecretStr | None = None
    webhook_allow_private: bool = False  # RFC 1918 / ULA callback hosts
    webhook_allow_loopback: bool = False  # tests and single-host setups only
    webhook_max_attempts: int = Field(6, ge=1, le=20)
    webhook_base_delay_s: float = Field(1.0, gt=0, le=600)
    webhook_concurrency: int = Field(64, ge=1, le=10_000)

    # `aiis ops`: budgets' spend, alerts, webhooks
    ops_tick_s: float = Field(1.0, gt=0, le=600)
    ops_stream_max_len: int = Field(100_000, ge=100, le=100_000_000)
    alert_webhook_url: str | None = None
    alert_backlog: int = Field(10_000, ge=1)  # queue depth (one priority) …
    alert_backlog_s: float = Field(60.0, ge=0, le=86_400)  # … held this long
    alert_error_rate_pct: float = Field(20.0, gt=0, le=100)
    alert_error_clear_pct: float = Field(10.0, ge=0, le=100)
    alert_error_window_s: float = Field(300.0, gt=0, le=86_400)
    alert_error_min_calls: int = Field(20, ge=1, le=1_000_000)

    # the intake stream (`aiis intake`, docs/intake.md): "" = <namespace>:intake
    intake_stream: str = Field("", max_length=200)
    intake_tenants: str = Field("", max_length=100_000)  # comma-separated allow-list; "" = any
    intake_batch: int = Field(256, ge=1, le=10_000)  # entries read (and admitted) at a time
    # an entry pending this long (its consumer died, or the queue was full) is admitted again
    intake_reclaim_s: float = Field(5.0, gt=0.05, le=3600)
    intake_rejected_max_len: int = Field(100_000, ge=100, le=100_000_000)

    # audit log stream bound (entries)
    audit_max_len: int = Field(1_000_000, ge=1000, le=100_000_000)
