"""Bearer tokens → tenants. Only SHA-256 hashes of tokens are configured, so a leaked config
file or environment dump does not leak a usable token.

A token's tenant is a tenant name, or ``*`` for an operator token that may read and submit for
every tenant. With no token configured the gateway is in *open mode*: it only binds to a
loopback address and every client is an operator (the same trust as running ``aiis`` locally
with Redis access).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.core.task import TENANT_PATTERN
from gateway.errors import GatewayConfigError, ProtocolError

ALL_TENANTS = "*"
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
_TENANT = re.compile(TENANT_PATTERN)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a connection or request acts as."""

    tenant: str  # a tenant name, or "*" (operator)
    # names the token in audit records: the first 12 hex of its SHA-256, never the token
    token_id: str | None = field(default=None, compare=False)

    @property
    def operator(self) -> bool:
        return self.tenant == ALL_TENANTS

    def may_read(self, tenant: str) -> bool:
        return self.operator or tenant == self.tenant


OPERATOR = Principal(ALL_TENANTS, "open")  # open mode: loopback only, no token


def hash_token(token: str) -> str:
    """The configured form of a token: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def token_id(digest: str) -> str:
    """The id of a token in audit records, from its configured hash (``sha256:<hex>``)."""
    return "t:" + digest.removeprefix("sha256:")[:12]


def parse_tokens(text: str, source: str = "AIIS_GATEWAY_TOKENS") -> dict[str, str]:
    """``sha256:<hex>=tenant`` items separated by commas or newlines; ``#`` starts a comment."""
    table: dict[str, str] = {}
    for n, raw in enumerate(re.split(r"[,\n]", text), 1):
        item = raw.split("#", 1)[0].strip()
        if not item:
            continue
        digest, sep, tenant = item.partition("=")
        digest, tenant = digest.strip().lower(), tenant.strip()
        if not sep or not _HASH.match(digest):
            raise GatewayConfigError(
                f"{source}: item {n} is not 'sha256:<64 hex>=tenant' "
                "(make one with `aiis token hash TOKEN`)"
            )
        if tenant != ALL_TENANTS and not _TENANT.match(tenant):
            raise GatewayConfigError(f"{source}: item {n}: bad tenant name {tenant!r}")
        table[digest] = tenant
    return table


def load_tokens(tokens: str, tokens_file: Path | None) -> dict[str, str]:
    table = parse_tokens(tokens)
    if tokens_file is not None:
        try:
            text = tokens_file.read_text()
        except OSError as exc:
            raise GatewayConfigError(f"AIIS_GATEWAY_TOKENS_FILE: cannot read: {exc}") from exc
        table.update(parse_tokens(text, str(tokens_file)))
    return table


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Authenticator:
    """Resolves a presented token to a ``Principal``."""

    def __init__(self, table: Mapping[str, str]) -> None:
        self._table = dict(table)

    @property
    def open(self) -> bool:
        return not self._table

    def authenticate(self, token: str | None) -> Principal | None:
        """The principal of ``token``; ``None`` when no token was presented (and one is
        needed); ``ProtocolError(unauthorized)`` for a token that is not configured."""
        if self.open:
            return OPERATOR
        if not token:
            return None
        # the lookup is by the token's hash: comparing hashes leaks nothing about the token
        digest = hash_token(token)
        tenant = self._table.get(digest)
        if tenant is None:
            raise ProtocolError("unauthorized", "unknown token", status=401)
        return Principal(tenant, token_id(digest))


def token_from(authorization: str | None, query_token: str | None) -> str | None:
    """The bearer token of a request: ``Authorization: Bearer …`` first, then ``?token=``."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return query_token or None
