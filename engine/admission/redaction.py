"""Reversible redaction of PII and the per-tenant policy: a pure core, no I/O.

``Redactor`` swaps each value ``engine.admission.pii.detect`` finds for a typed placeholder
(``<EMAIL_1>``; the same value gets the same placeholder within a request) and keeps the
mapping, so ``restore(text, mapping)`` puts the values back for the caller. A placeholder that
already occurs literally in the input is never handed out, so restoring cannot touch text the
caller wrote. ``screen`` applies a tenant's policy (``redact``, ``block``, ``off``) to the texts
of one request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from engine.admission.pii import SHADOW, Category, detect, may_hold_pii
from engine.errors import PiiBlocked


class Mode(StrEnum):
    REDACT = "redact"
    BLOCK = "block"
    OFF = "off"


# --- redaction and restore -------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"<(?:EMAIL|PHONE|CARD|IBAN|IP|MY_NUMBER|POSTAL_CODE)_[0-9]+>")


@dataclass(slots=True)
class Redactor:
    """Redacts the texts of one request with one shared numbering and mapping.

    ``reserved`` holds placeholder-looking strings that already occur in the request's texts;
    those are never handed out.
    """

    reserved: set[str] = field(default_factory=set)
    mapping: dict[str, str] = field(default_factory=dict)  # placeholder -> original value
    found: set[Category] = field(default_factory=set)
    _by_value: dict[tuple[Category, str], str] = field(default_factory=dict)
    _counters: dict[Category, int] = field(default_factory=dict)

    @classmethod
    def for_texts(cls, texts: Iterable[str]) -> Redactor:
        reserved: set[str] = set()
        for t in texts:
            reserved.update(_PLACEHOLDER.findall(t))
        return cls(reserved=reserved)

    def placeholder(self, category: Category, value: str) -> str:
        key = (category, value)
        existing = self._by_value.get(key)
        if existing is not None:
            return existing
        n = self._counters.get(category, 0)
        while True:
            n += 1
            token = f"<{category.value}_{n}>"
            if token not in self.reserved:
                break
        self._counters[category] = n
        self._by_value[key] = token
        self.mapping[token] = value
        return token

    def redact(self, text: str, categories: Iterable[Category] | None = None) -> str:
        """``text`` with every detected value replaced by its placeholder."""
        self.reserved.update(_PLACEHOLDER.findall(text))
        out: list[str] = []
        pos = 0
        for sp in detect(text, categories):
            out.append(text[pos : sp.start])
            out.append(self.placeholder(sp.category, sp.value))
            self.found.add(sp.category)
            pos = sp.end
        out.append(text[pos:])
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Redaction:
    text: str
    mapping: Mapping[str, str]
    found: frozenset[Category]


def redact(text: str) -> Redaction:
    """Redact one text; see ``Redactor`` for several texts of one request."""
    r = Redactor.for_texts([text])
    out = r.redact(text)
    return Redaction(out, dict(r.mapping), frozenset(r.found))


def has_placeholders(text: str) -> bool:
    """True when ``text`` holds something shaped like a placeholder (cheap pre-check)."""
    return "<" in text and _PLACEHOLDER.search(text) is not None


def restore(text: str, mapping: Mapping[str, str]) -> str:
    """Put the original values back in place of their placeholders (one pass: restored values
    are never rescanned)."""
    if not mapping:
        return text
    return _PLACEHOLDER.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)


# --- per-tenant policy ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    mode: Mode = Mode.REDACT
    restore: bool = True  # may the caller get its values back in the result


@dataclass(frozen=True, slots=True)
class PiiPolicies:
    """Policies by tenant; tenants not listed get ``default``."""

    default: TenantPolicy = TenantPolicy()
    tenants: Mapping[str, TenantPolicy] = field(default_factory=dict)

    def for_tenant(self, tenant: str) -> TenantPolicy:
        return self.tenants.get(tenant, self.default)

    @classmethod
    def parse(cls, raw: Mapping[str, object]) -> PiiPolicies:
        """From ``{"default": "redact", "tenants": {"acme": "block", "x": {"mode": "redact",
        "restore": false}}}``; raises ``ValueError`` naming the bad entry."""

        def one(where: str, value: object) -> TenantPolicy:
            if isinstance(value, str):
                value = {"mode": value}
            if not isinstance(value, Mapping) or set(value) - {"mode", "restore"}:
                raise ValueError(f"pii policy {where}: expected a mode or {{mode, restore}}")
            try:
                mode = Mode(value.get("mode", "redact"))
            except ValueError:
                raise ValueError(
                    f"pii policy {where}: mode must be one of {[m.value for m in Mode]}"
                ) from None
            restore_ok = value.get("restore", True)
            if not isinstance(restore_ok, bool):
                raise ValueError(f"pii policy {where}: restore must be true or false")
            return TenantPolicy(mode, restore_ok)

        tenants = raw.get("tenants", {})
        if not isinstance(tenants, Mapping):
            raise ValueError("pii policy tenants: expected an object")
        return cls(
            default=one("default", raw.get("default", "redact")),
            tenants={str(k): one(f"tenants.{k}", v) for k, v in tenants.items()},
        )


@dataclass(frozen=True, slots=True)
class Screened:
    """The texts of one request after the tenant's policy: what may be stored and sent."""

    texts: tuple[str, ...]
    mapping: Mapping[str, str]
    found: frozenset[Category]
    restorable: bool


def screen(texts: Sequence[str], policy: TenantPolicy) -> Screened:
    """Apply ``policy`` to the texts of one request (prompt, or each chat message).

    ``off`` passes them through; ``block`` raises ``PiiBlocked`` naming the categories found;
    ``redact`` replaces values with placeholders sharing one mapping.
    """
    if policy.mode is Mode.OFF or not any(may_hold_pii(t.translate(SHADOW)) for t in texts):
        return Screened(tuple(texts), {}, frozenset(), False)
    r = Redactor.for_texts(texts)
    out = tuple(r.redact(t) for t in texts)
    if policy.mode is Mode.BLOCK:
        if r.found:
            raise PiiBlocked(r.found)
        return Screened(tuple(texts), {}, frozenset(), False)
    return Screened(out, dict(r.mapping), frozenset(r.found), policy.restore)
