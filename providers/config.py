"""Provider settings: the only place in ``providers/`` that reads the environment.

Keys are ``SecretStr`` (their repr is ``'**********'``); everything else has a bounded default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ProviderName = Literal["gemini", "openai", "anthropic", "unsplash", "pexels"]
PROVIDERS: tuple[ProviderName, ...] = ("gemini", "openai", "anthropic", "unsplash", "pexels")
TEXT_PROVIDERS = frozenset({"gemini", "openai", "anthropic"})
IMAGE_PROVIDERS = frozenset({"unsplash", "pexels"})
# a provider's file in the secrets directory (AIIS_SECRETS_DIR), one key per line
SECRET_FILES: dict[str, str] = {
    p: "unsplash_access_key" if p == "unsplash" else f"{p}_api_key" for p in PROVIDERS
}

Chain = Annotated[tuple[str, ...], NoDecode]


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One provider's resolved configuration (what an adapter and its guards need)."""

    name: str
    api_key: SecretStr | None
    base_url: str
    model: str
    rpm: int  # requests per minute, 0 = no limit of ours
    tpm: int  # tokens per minute (text providers), 0 = no limit of ours


class ProviderSettings(BaseSettings):
    """Keys, base URLs, chains, timeouts, limits and default models for every provider."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    gemini_api_key: SecretStr | None = Field(None, validation_alias="GEMINI_API_KEY")
    openai_api_key: SecretStr | None = Field(None, validation_alias="OPENAI_API_KEY")
    anthropic_api_key: SecretStr | None = Field(None, validation_alias="ANTHROPIC_API_KEY")
    unsplash_access_key: SecretStr | None = Field(None, validation_alias="UNSPLASH_ACCESS_KEY")
    pexels_api_key: SecretStr | None = Field(None, validation_alias="PEXELS_API_KEY")

    gemini_base_url: str = Field(
        "https://generativelanguage.googleapis.com", validation_alias="AIIS_GEMINI_BASE_URL"
    )
    openai_base_url: str = Field("https://api.openai.com", validation_alias="AIIS_OPENAI_BASE_URL")
    anthropic_base_url: str = Field(
        "https://api.anthropic.com", validation_alias="AIIS_ANTHROPIC_BASE_URL"
    )
    unsplash_base_url: str = Field(
        "https://api.unsplash.com", validation_alias="AIIS_UNSPLASH_BASE_URL"
    )
    pexels_base_url: str = Field("https://api.pexels.com", validation_alias="AIIS_PEXELS_BASE_URL")

    gemini_model: str = Field("gemini-2.5-flash", validation_alias="AIIS_GEMINI_MODEL")
    openai_model: str = Field("gpt-5-mini", validation_alias="AIIS_OPENAI_MODEL")
    anthropic_model: str = Field("claude-sonnet-4-5", validation_alias="AIIS_ANTHROPIC_MODEL")

    text_chain: Chain = Field(("gemini", "openai", "anthropic"), validation_alias="AIIS_TEXT_CHAIN")
    chat_chain: Chain = Field(("gemini", "openai", "anthropic"), validation_alias="AIIS_CHAT_CHAIN")
    image_chain: Chain = Field(("unsplash", "pexels"), validation_alias="AIIS_IMAGE_CHAIN")

    connect_timeout_s: float = Field(5.0, gt=0, le=60, validation_alias="AIIS_CONNECT_TIMEOUT_S")
    # time to the response headers (and per socket read): long, models think before answering
    read_timeout_s: float = Field(120.0, gt=0, le=900, validation_alias="AIIS_READ_TIMEOUT_S")
    # longest silence between two chunks of a stream
    stream_idle_timeout_s: float = Field(
        30.0, gt=0, le=600, validation_alias="AIIS_STREAM_IDLE_TIMEOUT_S"
    )
    # whole call, capped further by the task's deadline
    call_timeout_s: float = Field(300.0, gt=0, le=3600, validation_alias="AIIS_CALL_TIMEOUT_S")
    # calls to one provider in flight per process, and the most streams we put on one HTTP/2
    # connection (the server's SETTINGS may allow fewer: real APIs say 100-250)
    max_in_flight: int = Field(2000, ge=1, le=20000, validation_alias="AIIS_PROVIDER_MAX_IN_FLIGHT")
    streams_per_connection: int = Field(1000, ge=1, le=10000, validation_alias="AIIS_H2_STREAMS")
    # plain-http base URLs (sandbox, local proxies) speak h2c only with prior knowledge
    http2_prior_knowledge: bool = Field(False, validation_alias="AIIS_HTTP2_PRIOR_KNOWLEDGE")
    max_output_tokens: int = Field(
        1024, ge=1, le=200_000, validation_alias="AIIS_MAX_OUTPUT_TOKENS"
    )
    images_per_request: int = Field(10, ge=1, le=80, validation_alias="AIIS_IMAGES_PER_REQUEST")

    gemini_rpm: int = Field(1000, ge=0, validation_alias="AIIS_GEMINI_RPM")
    gemini_tpm: int = Field(1_000_000, ge=0, validation_alias="AIIS_GEMINI_TPM")
    openai_rpm: int = Field(500, ge=0, validation_alias="AIIS_OPENAI_RPM")
    openai_tpm: int = Field(500_000, ge=0, validation_alias="AIIS_OPENAI_TPM")
    anthropic_rpm: int = Field(50, ge=0, validation_alias="AIIS_ANTHROPIC_RPM")
    anthropic_tpm: int = Field(30_000, ge=0, validation_alias="AIIS_ANTHROPIC_TPM")
    unsplash_rpm: int = Field(50, ge=0, validation_alias="AIIS_UNSPLASH_RPM")
    pexels_rpm: int = Field(200, ge=0, validation_alias="AIIS_PEXELS_RPM")
    # share of a minute's budget that may be spent at once (GCRA burst tolerance)
    rate_burst_fraction: float = Field(0.1, ge=0, le=1, validation_alias="AIIS_RATE_BURST")
    # longest a call waits for a rate-limit slot before giving the task back to the engine
    rate_max_wait_s: float = Field(30.0, ge=0, le=600, validation_alias="AIIS_RATE_MAX_WAIT_S")

    breaker_threshold: int = Field(5, ge=1, le=1000, validation_alias="AIIS_BREAKER_THRESHOLD")
    breaker_open_s: float = Field(60.0, gt=0, le=3600, validation_alias="AIIS_BREAKER_OPEN_S")

    redis_prefix: str = Field("aiis", min_length=1, validation_alias="AIIS_PROVIDERS_PREFIX")

    # keys (providers/credentials/keyring.py): a secrets directory whose files replace the
    # variables,
    # scheduled round-robin (0 = only on rejection), how long a rejected key is skipped
    secrets_dir: Path | None = Field(None, validation_alias="AIIS_SECRETS_DIR")
    key_rotate_s: float = Field(0.0, ge=0, le=86_400 * 30, validation_alias="AIIS_KEY_ROTATE_S")
    key_bad_for_s: float = Field(3600.0, gt=0, le=86_400 * 7, validation_alias="AIIS_KEY_BAD_FOR_S")

    @field_validator("text_chain", "chat_chain", "image_chain", mode="before")
    @classmethod
    def _split_chain(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    @field_validator("text_chain", "chat_chain")
    @classmethod
    def _text_chain_known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_chain(value, TEXT_PROVIDERS)

    @field_validator("image_chain")
    @classmethod
    def _image_chain_known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_chain(value, IMAGE_PROVIDERS)

    def provider(self, name: str) -> ProviderConfig:
        """The resolved configuration of one provider."""
        key_field = "unsplash_access_key" if name == "unsplash" else f"{name}_api_key"
        key: SecretStr | None = getattr(self, key_field)
        if key is not None and not key.get_secret_value():
            key = None
        return ProviderConfig(
            name=name,
            api_key=key,
            base_url=str(getattr(self, f"{name}_base_url")).rstrip("/"),
            model=str(getattr(self, f"{name}_model", f"{name}-search")),
            rpm=int(getattr(self, f"{name}_rpm")),
            tpm=int(getattr(self, f"{name}_tpm", 0)),
        )

    def has_any_key(self) -> bool:
        """True when at least one provider has a key, in a variable or a secrets file (else
        the service runs on the sandbox)."""
        if any(self.provider(p).api_key is not None for p in PROVIDERS):
            return True
        d = self.secrets_dir
        return d is not None and any((d / f).is_file() for f in SECRET_FILES.values())


def _check_chain(value: tuple[str, ...], allowed: frozenset[str]) -> tuple[str, ...]:
    unknown = [p for p in value if p not in allowed]
    if unknown:
        raise ValueError(f"unknown providers in chain: {unknown}; allowed: {sorted(allowed)}")
    if not value:
        raise ValueError("a chain needs at least one provider")
    return value
