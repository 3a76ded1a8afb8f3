"""Sanitising requests and results (storing large results out of line: ``engine.core.blobs``).

``clean_text`` strips control and format characters except ``\\n`` and ``\\t`` (``\\r\\n``
becomes ``\\n``; NUL, escape sequences, bidi overrides and zero-width characters are removed)
and normalises to NFC. ``check_size`` enforces a byte limit with an error naming the field.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from engine.errors import InvalidTask

_KEEP = frozenset("\n\t")
# bidi embeddings/overrides/isolates and zero-width characters: invisible, and used to hide
# text from reviewers (CVE-2021-42574 "Trojan Source") or to smuggle prompt injections
_INVISIBLE = frozenset(
    [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]
)


# any character clean_text would drop or change; text without one (and already NFC) is
# returned as is, so the common case costs one C-level scan instead of a Python loop
_SUSPECT = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b-\u200d\u202a-\u202e\u2060\u2066-\u2069"
    "\ufeff\ud800-\udfff\ue000-\uf8ff\U000f0000-\U0010ffff]"
)


def clean_text(text: str) -> str:
    """NFC-normalised ``text`` without control, bidi-override or zero-width characters."""
    if _SUSPECT.search(text) is None and unicodedata.is_normalized("NFC", text):
        return text
    text = text.replace("\r\n", "\n")
    out = []
    for ch in text:
        if ch in _KEEP:
            out.append(ch)
        elif ch in _INVISIBLE or unicodedata.category(ch) in ("Cc", "Cs", "Co"):
            continue
        else:
            out.append(ch)
    return unicodedata.normalize("NFC", "".join(out))


def check_size(field: str, text: str, limit_bytes: int) -> None:
    """``InvalidTask`` naming ``field`` when ``text`` is over ``limit_bytes`` in UTF-8."""
    size = len(text.encode())
    if size > limit_bytes:
        raise InvalidTask(field, f"{size} bytes; the limit is {limit_bytes}")


@dataclass(frozen=True, slots=True)
class Limits:
    request_bytes: int = 1_000_000
    result_bytes: int = 4_000_000  # a result over this is truncated, never stored whole
    chat_messages: int = 1000  # messages of one chat (the gateway checks before parsing them)


def clean_request(texts: list[str], limits: Limits = Limits()) -> list[str]:
    """Cleaned request texts (prompt or chat contents), within the request size limit."""
    cleaned = [clean_text(t) for t in texts]
    check_size("input", "".join(cleaned), limits.request_bytes)
    return cleaned


def clean_result(text: str, limits: Limits = Limits()) -> tuple[str, bool]:
    """(cleaned result, truncated?): over ``result_bytes`` it is cut on a character boundary."""
    cleaned = clean_text(text)
    data = cleaned.encode()
    if len(data) <= limits.result_bytes:
        return cleaned, False
    return data[: limits.result_bytes].decode(errors="ignore"), True
