"""PII detection (engine/admission/pii.py), redaction, restore and per-tenant policy
(engine/admission/redaction.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.admission.pii import (
    SHADOW,
    Category,
    detect,
    iban_ok,
    luhn_ok,
    may_hold_pii,
    my_number_ok,
)
from engine.admission.redaction import (
    Mode,
    PiiPolicies,
    Redactor,
    TenantPolicy,
    redact,
    restore,
    screen,
)
from engine.errors import InvalidTask, PiiBlocked

CORPUS = Path(__file__).resolve().parents[1] / "data" / "pii_corpus.jsonl"


def found(text: str) -> list[tuple[str, str]]:
    return [(s.category.value, s.value) for s in detect(text)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("mail taro.yamada@example.co.jp です", "taro.yamada@example.co.jp"),
        ("reply to first.last+promo@sub.example.co.uk.", "first.last+promo@sub.example.co.uk"),
        ("連絡先:info@example.jpまで", "info@example.jp"),
    ],
)
def test_detects_email(text: str, value: str) -> None:
    """E-mail addresses are found with exact bounds, next to Japanese text too."""
    assert found(text) == [("EMAIL", value)]


@pytest.mark.parametrize(
    "value",
    [
        "090-1234-5678",
        "03-1234-5678",
        "045-222-1234",
        "0120-123-456",
        "080 1234 5678",
        "09012345678",
        "+81 90 1234 5678",
        "+81-3-1234-5678",
        "+44 20 7946 0958",
        "+1 (415) 555-2671",
        "(212) 555-0198",
        "０９０－１２３４－５６７８",
    ],
)
def test_detects_phone(value: str) -> None:
    """International, Japanese (incl. full-width) and North American phone numbers are found."""
    assert found(f"電話は{value}です") == [("PHONE", value)]
    assert found(f"Call {value}, thanks") == [("PHONE", value)]


@pytest.mark.parametrize(
    "value",
    ["4111 1111 1111 1111", "4111-1111-1111-1111", "5555555555554444", "3782 822463 10005"],
)
def test_detects_card(value: str) -> None:
    """Luhn-valid card numbers with a real issuer prefix are found, spaced, dashed or plain."""
    assert found(f"card {value} exp 12/27") == [("CARD", value)]


def test_detects_card_followed_by_a_year() -> None:
    """A card number followed by another number is still found, without the extra number."""
    assert found("card 4111 1111 1111 1111 2025") == [("CARD", "4111 1111 1111 1111")]


@pytest.mark.parametrize(
    "value", ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "NL91ABNA0417164300"]
)
def test_detects_iban(value: str) -> None:
    """mod-97-valid IBANs of the right country length are found, grouped or compact."""
    assert found(f"IBAN {value} PLEASE") == [("IBAN", value)]


@pytest.mark.parametrize(
    "value", ["192.168.1.10", "2001:db8::8a2e:370:7334", "fe80::1", "::1", "::ffff:192.0.2.1"]
)
def test_detects_ip(value: str) -> None:
    """IPv4 and IPv6 addresses are found (validated with ipaddress)."""
    assert found(f"from {value}.") == [("IP", value)]


@pytest.mark.parametrize("value", ["123456789018", "1234 5678 9018", "１２３４５６７８９０１８"])
def test_detects_my_number(value: str) -> None:
    """12-digit My Numbers with a valid check digit are found."""
    assert found(f"マイナンバーは{value}です") == [("MY_NUMBER", value)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("〒100-0001 千代田区", "100-0001"),
        ("〒1000001", "1000001"),
        ("郵便番号：060-0001", "060-0001"),
        ("150-0002 東京都渋谷区", "150-0002"),
        ("zip code 100-0001, Japan", "100-0001"),
    ],
)
def test_detects_postal_code_in_context(text: str, value: str) -> None:
    """Japanese postal codes are found after 〒 or a keyword, or before a prefecture."""
    assert found(text) == [("POSTAL_CODE", value)]


@pytest.mark.parametrize(
    "text",
    [
        "order ORD-2024-000123 placed",
        "at 2024-03-15 10:30:00 UTC",
        "2024-03-15T09:30:00+09:00",
        "released v2.3.1 and version 10.0.19041.1",
        "バージョン 1.2.3.4 に更新",
        "OID 1.3.6.1.4.1.311",
        "card 4111 1111 1111 1112",  # Luhn fails
        "card 1234 5678 9012 3456",  # no issuer, Luhn fails
        "IBAN GB82 WEST 1234 5698 7654 31",  # mod 97 fails
        "照会番号 123456789012",  # check digit fails
        "build 202401151230",  # a timestamp, even if the check digit passed
        "品番 123-4567 の在庫",  # no postal context
        "ISBN 978-4-06-519981-6",
        "MAC 00:1A:2B:3C:4D:5E at 12:30:45",
        "999.10.10.10 is not an address",
        "icon@2x.png and @support",
        "555-0100 is fictional",
        "Total ¥1,234,567 (税込)",
    ],
)
def test_look_alikes_are_not_pii(text: str) -> None:
    """Order numbers, dates, timestamps, versions and invalid numbers are left alone."""
    assert found(text) == []


def test_validators() -> None:
    """The checksum helpers accept known-good values and reject one-digit changes."""
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")
    assert not iban_ok("DE8937040044053201300")  # wrong length for DE
    assert my_number_ok("123456789018") and not my_number_ok("123456789012")


def test_corpus_precision_and_recall_floor() -> None:
    """On the labelled corpus, precision and recall stay at or above 0.98."""
    tp = fp = fn = 0
    for line in CORPUS.read_bytes().splitlines():
        row = orjson.loads(line)
        want = {(s["start"], s["end"], s["category"]) for s in row["spans"]}
        got = {(s.start, s.end, s.category.value) for s in detect(row["text"])}
        tp, fp, fn = tp + len(want & got), fp + len(got - want), fn + len(want - got)
    assert tp > 200
    assert tp / (tp + fp) >= 0.98, (tp, fp)
    assert tp / (tp + fn) >= 0.98, (tp, fn)


def test_same_value_same_placeholder_and_restore() -> None:
    """A repeated value gets one placeholder; restore gives back the exact original."""
    text = "mail a@example.com, again a@example.com, or b@example.com; tel 03-1234-5678"
    r = redact(text)
    assert r.text == "mail <EMAIL_1>, again <EMAIL_1>, or <EMAIL_2>; tel <PHONE_1>"
    assert r.mapping == {
        "<EMAIL_1>": "a@example.com",
        "<EMAIL_2>": "b@example.com",
        "<PHONE_1>": "03-1234-5678",
    }
    assert r.found == {Category.EMAIL, Category.PHONE}
    assert restore(r.text, r.mapping) == text


def test_literal_placeholder_in_input_is_never_reused() -> None:
    """A placeholder-looking string already in the input survives redact and restore intact."""
    text = "template says <EMAIL_1>; real one is x@example.com"
    r = redact(text)
    assert "<EMAIL_1>" not in r.mapping
    assert restore(r.text, r.mapping) == text


def test_restore_of_model_output_with_placeholders() -> None:
    """A model answer quoting placeholders is restored; unknown placeholders stay as they are."""
    r = Redactor.for_texts(["contact x@example.com"])
    r.redact("contact x@example.com")
    assert restore("I wrote to <EMAIL_1> and <EMAIL_9>.", r.mapping) == (
        "I wrote to x@example.com and <EMAIL_9>."
    )


def test_block_policy_names_categories_not_values() -> None:
    """Policy block raises PiiBlocked (an InvalidTask) naming categories, never the values."""
    policy = TenantPolicy(Mode.BLOCK)
    with pytest.raises(PiiBlocked) as info:
        screen(["card 4111 1111 1111 1111", "mail a@example.com"], policy)
    assert isinstance(info.value, InvalidTask)
    assert info.value.categories == (Category.CARD, Category.EMAIL)
    message = str(info.value)
    assert "CARD" in message and "EMAIL" in message
    assert "4111" not in message and "a@example.com" not in message
    assert screen(["nothing personal"], policy).texts == ("nothing personal",)


def test_off_policy_passes_through_and_redact_shares_one_mapping() -> None:
    """off leaves texts untouched; redact numbers across all texts of a request."""
    texts = ["a@example.com", "b@example.com and a@example.com"]
    assert screen(texts, TenantPolicy(Mode.OFF)).texts == tuple(texts)
    out = screen(texts, TenantPolicy(Mode.REDACT, restore=False))
    assert out.texts == ("<EMAIL_1>", "<EMAIL_2> and <EMAIL_1>")
    assert out.restorable is False


def test_policies_parse_and_reject_bad_config() -> None:
    """Tenant policies parse from config; a bad mode is a ValueError naming the entry."""
    p = PiiPolicies.parse({"default": "redact", "tenants": {"acme": "block", "x": {"mode": "off"}}})
    assert p.for_tenant("acme").mode is Mode.BLOCK
    assert p.for_tenant("x").mode is Mode.OFF
    assert p.for_tenant("other").mode is Mode.REDACT
    with pytest.raises(ValueError, match=r"tenants\.acme"):
        PiiPolicies.parse({"tenants": {"acme": "shred"}})


# --- properties ---------------------------------------------------------------------------

PII_VALUES = st.sampled_from(
    [
        "a.b@example.com",
        "taro@example.co.jp",
        "090-1234-5678",
        "+81 90 1234 5678",
        "4111 1111 1111 1111",
        "GB82WEST12345698765432",
        "10.1.2.3",
        "2001:db8::1",
        "123456789018",
        "〒100-0001",
    ]
)
FILLER = st.text(
    alphabet=st.sampled_from(list("abc xyz,.:;-@<>_()0123456789\nあいう漢字〒EMAIL")), max_size=12
)
PIECES = st.lists(st.one_of(PII_VALUES, FILLER, st.just("<EMAIL_1>")), max_size=8)


@settings(max_examples=300, deadline=None)
@given(PIECES)
def test_redaction_leaves_no_detected_value_and_restores(pieces: list[str]) -> None:
    """For any text, no detected value survives redaction and restore(redact(x)) == x."""
    text = " ".join(pieces)
    spans = detect(text)
    r = redact(text)
    for sp in spans:
        assert sp.value not in r.text
    again = {s.value for s in detect(r.text)}
    assert not again & set(r.mapping.values())
    assert restore(r.text, r.mapping) == text


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_restore_roundtrip_on_arbitrary_text(text: str) -> None:
    """restore(redact(x)) == x for arbitrary unicode text."""
    r = redact(text)
    assert restore(r.text, r.mapping) == text


def _full_detect(text: str) -> list[tuple[int, int, str]]:
    """``detect`` with its fast pre-check switched off."""
    from engine.admission import pii

    original = pii.may_hold_pii
    pii.may_hold_pii = lambda s: True
    try:
        return [(s.start, s.end, s.category.value) for s in detect(text)]
    finally:
        pii.may_hold_pii = original


def test_fast_pre_check_never_hides_pii_in_the_corpus() -> None:
    """The pre-check that skips the detectors skips only texts where they find nothing."""
    skipped = 0
    for line in CORPUS.read_bytes().splitlines():
        text = orjson.loads(line)["text"]
        fast = [(s.start, s.end, s.category.value) for s in detect(text)]
        assert fast == _full_detect(text), text
        skipped += fast == [] and not may_hold_pii(text.translate(SHADOW))
    assert skipped > 0  # it does skip something


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from("0123456789０１２３ .-+:@()ABGBDEabc\n〒"), max_size=40))
def test_fast_pre_check_agrees_with_the_detectors(text: str) -> None:
    """On random digit-heavy text, detect with and without the pre-check agree."""
    assert [(s.start, s.end, s.category.value) for s in detect(text)] == _full_detect(text)
