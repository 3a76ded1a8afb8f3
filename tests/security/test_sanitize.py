"""Sanitising text, size limits, out-of-line results (engine/admission/sanitize.py)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from engine.admission.sanitize import (
    Limits,
    clean_request,
    clean_result,
    clean_text,
)
from engine.core.blobs import Offloader, ResultRef
from engine.core.keys import PartitionKeys, blob_key
from engine.errors import InvalidTask, ResultGone


def test_strips_controls_keeps_newlines_and_tabs() -> None:
    """NUL, ESC sequences, bidi overrides and zero-width chars go; \\n and \\t stay."""
    dirty = "a\x00b\x1b[31mred\x1b[0m\r\nline\ttab\u202eevil\u200bx\ufeff"
    assert clean_text(dirty) == "ab[31mred[0m\nline\ttabevilx"


def test_normalises_to_nfc() -> None:
    """Decomposed characters are composed (NFC): e + combining acute -> é, カ + ゛ -> ガ."""
    assert clean_text("e\u0301") == "\u00e9"
    assert clean_text("\u30ab\u3099") == "\u30ac"


@given(st.text())
def test_clean_is_idempotent_and_control_free(text: str) -> None:
    """Cleaning twice changes nothing, and no control character but \\n and \\t remains."""
    once = clean_text(text)
    assert clean_text(once) == once
    assert all(c in "\n\t" or not (ord(c) < 32 or 0x7F <= ord(c) < 0xA0) for c in once)


def test_request_limit_names_the_field() -> None:
    """A request over the byte limit is an InvalidTask on 'input'."""
    with pytest.raises(InvalidTask, match="input: 12 bytes; the limit is 10"):
        clean_request(["あいうえ"], Limits(request_bytes=10))
    assert clean_request(["ok\x00"], Limits(request_bytes=10)) == ["ok"]


def test_result_truncation_keeps_whole_characters() -> None:
    """A result over the limit is cut on a character boundary and flagged."""
    text, cut = clean_result("あいうえお", Limits(result_bytes=7))
    assert (text, cut) == ("あい", True)
    assert clean_result("short", Limits(result_bytes=7)) == ("short", False)


def test_blob_key_stays_in_the_task_slot() -> None:
    """The result key carries the partition's hash tag; a prefix without one is refused."""
    tag = PartitionKeys("aiis", 3).tag
    key = blob_key(tag, "abc", 2)
    assert key == "aiis:{p3}:result:abc:2"
    with pytest.raises(ValueError, match="hash tag"):
        blob_key("aiis:p3", "abc", 2)


async def test_large_result_offloaded_and_loaded(redis: aioredis.Redis, namespace: str) -> None:
    """Over the threshold the text is stored with a TTL and loads back; small stays inline."""
    off = Offloader(redis, threshold_bytes=100, ttl_s=60)
    tag = PartitionKeys(namespace, 0).tag
    assert await off.store(tag, "t1", 1, "small") is None
    big = "結果" * 100
    ref = await off.store(tag, "t1", 1, big)
    assert ref is not None and ref.size == len(big.encode())
    assert await off.load(ref) == big
    assert 0 < await redis.ttl(ref.key) <= 60
    await redis.delete(ref.key)
    with pytest.raises(ResultGone):
        await off.load(ref)
    await redis.set(ref.key, b"tampered")
    with pytest.raises(ResultGone):
        await off.load(ResultRef(ref.key, ref.size, ref.sha256))
