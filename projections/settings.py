"""Projection limits (``AIIS_PROJ_*``), parsed once from the environment. The engine's
``Settings`` supplies namespace, partitions, Redis URL, data dir and ``task_retention_s``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.settings import Settings


class ProjectionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIIS_PROJ_", extra="ignore", frozen=True)

    # view semantics (changing one changes the views: run `aiis replay` afterwards)
    task_max: int = Field(100_000, ge=100, le=50_000_000)  # task_state records, all partitions
    cost_days: int = Field(400, ge=1, le=10_000)  # UTC days the cost view keeps
    health_bucket_s: int = Field(60, ge=1, le=3600)  # provider_health window granularity
    health_buckets: int = Field(15, ge=1, le=1440)  # buckets kept (15 × 60 s = 15 min)
    throughput_minutes: int = Field(60, ge=1, le=1440)  # per-minute counters kept

    # runner
    batch: int = Field(1000, ge=1, le=100_000)  # events per read and per atomic step
    idle_min_s: float = Field(0.05, gt=0, le=10)  # poll backoff when a log is idle
    idle_max_s: float = Field(1.0, gt=0, le=60)
    lag_report_s: float = Field(10.0, gt=0, le=3600)

    # archive
    archive_dir: Path | None = None  # default: AIIS_DATA_DIR/archive
    segment_events: int = Field(100_000, ge=1, le=10_000_000)
    archive_min_age_s: float = Field(3600.0, ge=0)  # keep this much recent log in the stream
    # `aiis projections` (so `aiis serve`) archives and trims this often; 0 = only `aiis archive`
    archive_interval_s: float = Field(
        300.0,
        ge=0,
        le=86_400,
        validation_alias=AliasChoices("AIIS_ARCHIVE_INTERVAL_S", "archive_interval_s"),
    )


def archive_dir(settings: Settings, proj: ProjectionSettings, override: Path | None = None) -> Path:
    """Where archive segments live: ``--dir``, else AIIS_PROJ_ARCHIVE_DIR, else data dir."""
    if override is not None:
        return override
    if proj.archive_dir is not None:
        return proj.archive_dir
    return settings.data_dir / "archive"
