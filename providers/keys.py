"""Every Redis key of ``providers/``. One provider's keys share the hash tag ``{prov:NAME}`` so
the Lua scripts that touch several of them run on one Redis Cluster slot."""

from __future__ import annotations


def tag(prefix: str, provider: str) -> str:
    return f"{prefix}:{{prov:{provider}}}"


def breaker(prefix: str, provider: str) -> str:
    """Hash: state, opened_at, failures."""
    return f"{tag(prefix, provider)}:breaker"


def probe(prefix: str, provider: str) -> str:
    """String, SET NX PX: held by the one half-open probe in flight."""
    return f"{tag(prefix, provider)}:probe"


def rate(prefix: str, provider: str, dimension: str) -> str:
    """String: GCRA theoretical arrival time (ms) of ``requests`` or ``tokens``."""
    return f"{tag(prefix, provider)}:rate:{dimension}"


def blocked(prefix: str, provider: str) -> str:
    """String: unix ms until which the provider said our budget is spent."""
    return f"{tag(prefix, provider)}:blocked"
