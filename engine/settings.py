"""One settings object, parsed once from the environment (``AIIS_*``). Every limit is named and
bounded; nothing else in the engine reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIIS_", extra="ignore", frozen=True)

    redis_url: str | None = None
    redis_cluster: bool = False  # AIIS_REDIS_URL names a node of a Redis Cluster
    data_dir: Path = Path(".aiis")
    namespace: str = Field("aiis", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    partitions: int = Field(1, ge=1, le=1024)

    # worker
    # auto: the provider router (real keys, else AIIS_SANDBOX_URL); echo; scripted (tests)
    provider: str = Field("auto", pattern=r"^(auto|echo|scripted)$")
    sandbox_url: str | None = None  # point every adapter at a sandbox (set by `aiis serve`)
    concurrency: int = Field(64, ge=1, le=20_000)
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

    # retry (DESIGN.md §1 table)
    retry_base_s: float = Field(1.0, gt=0, le=600)
    retry_max_s: float = Field(300.0, gt=0, le=86_400)
    retry_jitter: float = Field(0.2, ge=0, le=1)

    # retention
    task_retention_s: float = Field(86_400.0, gt=0)
    dlq_max_len: int = Field(100_000, ge=1)

    # gateway
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8765, ge=0, le=65535)
