"""PII detection: a pure core, no I/O (redaction, restore and policies:
``engine.admission.redaction``).

``detect(text)`` finds e-mail addresses (IDN domains too), phone numbers (E.164, Japanese with
``-``/``.``/space or a bracketed area code, after ``TEL``; North American), card
numbers (Luhn + issuer prefix), IBANs (country length + mod 97), IPv4/IPv6 (``ipaddress``),
Japanese My Numbers (official check digit) and Japanese postal codes (with 〒 or in context).
Every candidate is validated, so look-alikes (order numbers, dates, versions, non-Luhn numbers,
bad IBANs, 12-digit numbers failing the check digit) are left alone.

Full-width digits, hyphens and ``＠`` (０９０－１２３４－５６７８) are recognised: detection
runs on a shadow copy translated character for character, so offsets stay those of the
original text.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Category(StrEnum):
    EMAIL = "EMAIL"
    PHONE = "PHONE"
    CARD = "CARD"
    IBAN = "IBAN"
    IP = "IP"
    MY_NUMBER = "MY_NUMBER"
    POSTAL_CODE = "POSTAL_CODE"


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    category: Category
    value: str


# --- shadow text: same length, ASCII digits and punctuation ------------------------------

SHADOW = str.maketrans(
    {
        **{chr(0xFF10 + i): str(i) for i in range(10)},
        "\uff0d": "-",  # full-width hyphen-minus
        "\u2010": "-",  # hyphen
        "\u2011": "-",  # non-breaking hyphen
        "\u2012": "-",  # figure dash
        "\u2013": "-",  # en dash
        "\u2212": "-",  # minus sign
        "\uff0b": "+",
        "\uff08": "(",
        "\uff09": ")",
        "\uff20": "@",  # full-width commercial at
        "\uff0e": ".",  # full-width full stop
        "\u3000": " ",  # ideographic space
    }
)


# --- validators ----------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string is valid."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_prefix_ok(d: str) -> bool:
    """The issuer prefix (IIN) and length belong to a real card scheme."""
    n = len(d)
    p2, p3, p4, p6 = int(d[:2]), int(d[:3]), int(d[:4]), int(d[:6])
    if d[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 222100 <= p6 <= 272099:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # American Express
        return n == 15
    if 3528 <= p4 <= 3589:  # JCB
        return 16 <= n <= 19
    if p4 in (1800, 2131):  # JCB, the older 15-digit numbers
        return n == 15
    if 300 <= p3 <= 305 or p2 in (36, 38, 39) or p4 == 3095:  # Diners
        return 14 <= n <= 19
    if p4 == 6011 or 644 <= p3 <= 649 or p2 in (62, 65):  # Discover, UnionPay
        return 16 <= n <= 19
    if p2 == 50 or 56 <= p2 <= 69:  # Maestro
        return 13 <= n <= 19
    return False


def my_number_ok(digits: str) -> bool:
    """A 12-digit Japanese individual number with a valid check digit (official formula)."""
    if len(digits) != 12 or not digits.isascii() or not digits.isdigit():
        return False
    body = digits[:11]
    total = 0
    for n in range(1, 12):  # n counts from the right of the 11-digit body
        p = int(body[11 - n])
        q = n + 1 if n <= 6 else n - 5
        total += p * q
    rem = total % 11
    check = 0 if rem <= 1 else 11 - rem
    return check == int(digits[11])


# ISO 13616 lengths (SWIFT registry)
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_ok(compact: str) -> bool:
    """An IBAN (no spaces, upper case) of its country's length whose mod-97 check is 1."""
    compact = compact.upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    if not rearranged.isascii() or not rearranged.isalnum():
        return False
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _looks_like_datetime(d: str) -> bool:
    """YYYYMMDDhhmm: a 12-digit timestamp, not an identifier."""
    year, month, day, hour, minute = int(d[:4]), int(d[4:6]), int(d[6:8]), int(d[8:10]), int(d[10:])
    return (
        1900 <= year <= 2099 and 1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60
    )


# --- detectors (each returns spans on the shadow text) --------------------------------------

# domain labels may be internationalised (IDN: münchen.de, 例え.jp); the TLD is ASCII or
# punycode and the local part Latin, so Japanese prose around the address is not swallowed
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9\u00c0-\u024f._%+-])[A-Za-z0-9\u00c0-\u024f]"
    r"(?:[A-Za-z0-9\u00c0-\u024f._%+-]{0,63})@"
    r"((?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+([A-Za-z]{2,24}|xn--[A-Za-z0-9-]{1,59}))"
    r"(?!\.?[A-Za-z0-9-])"
)
_FILE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tiff"})

# runs of digit groups separated by one space or hyphen: the raw material of cards/My Numbers
_DIGIT_RUN = re.compile(r"(?<![A-Za-z0-9_.+/-])[0-9]+(?:[ -][0-9]+)*(?![A-Za-z0-9_])")
_CARD_SHAPES = frozenset({(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 4, 1)})

_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?: ?[A-Za-z0-9]{1,4}){3,8}")

_IPV4 = re.compile(r"(?<![A-Za-z0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![A-Za-z0-9]|\.[0-9])")
_IPV6 = re.compile(
    r"(?<![A-Za-z0-9:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{1,4})?"
    r"(?![A-Za-z0-9]|\.[0-9])"
)
_VERSION_CONTEXT = re.compile(r"(?:version|ver\.?|v|バージョン|rev\.?|release)\s*$", re.IGNORECASE)

_PHONE_JP = re.compile(
    r"(?:(?<![A-Za-z0-9+.\-/])|(?<=TEL|Tel|tel|FAX|Fax|fax)|(?<=TEL:|Tel:|tel:|FAX:|Fax:|fax:))"
    r"(0[0-9]{1,4}(?:([ .-])[0-9]{1,4}\2|\([0-9]{1,4}\))[0-9]{3,4}|0[5789]0[0-9]{8}"
    r"|\(0[0-9]{1,4}\) ?[0-9]{1,4}[ -][0-9]{3,4})"
    r"(?![A-Za-z0-9]|[-.][0-9])"
)
_PHONE_INTL = re.compile(r"(?<![A-Za-z0-9+])\+[0-9]{1,3}(?:[ .-]?\(?[0-9]{1,5}\)?){1,6}(?![0-9])")
_PHONE_NANP = re.compile(
    r"(?<![A-Za-z0-9+.\-/])(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}([-. ]))[2-9][0-9]{2}[-. ][0-9]{4}"
    r"(?![A-Za-z0-9]|[-.][0-9])"
)

_POSTAL = re.compile(r"(〒 ?)?(?<![0-9-])[0-9]{3}-?[0-9]{4}(?![0-9]|-[0-9])")
_POSTAL_BEFORE = re.compile(
    r"(?:郵便番号|〒|postal code|postcode|post code|zip code|zip)[\s:：は（()）]*$", re.IGNORECASE
)
_POSTAL_AFTER = re.compile(r"^\s?(?:東京都|北海道|大阪府|京都府|[一-龥]{2,3}県)")


def _emails(s: str) -> Iterable[Span]:
    for m in _EMAIL.finditer(s):
        if m.group(2).lower() not in _FILE_EXTENSIONS:
            yield Span(m.start(), m.end(), Category.EMAIL, "")


def _digit_runs(s: str) -> Iterable[Span]:
    for m in _DIGIT_RUN.finditer(s):
        text = m.group(0)
        groups = re.split(r"[ -]", text)
        seps = re.findall(r"[ -]", text)
        offsets, pos = [], m.start()
        for g in groups:
            offsets.append(pos)
            pos += len(g) + 1
        for i, g in enumerate(groups):  # My Numbers: one 12-digit group, or 4-4-4 on its own
            n = 0
            if len(g) == 12 and not _looks_like_datetime(g):
                n = 1
            elif (
                [len(x) for x in groups[i : i + 3]] == [4, 4, 4]
                and seps[i] == seps[i + 1]
                and (i == 0 or seps[i - 1] != seps[i])
                and (i + 3 == len(groups) or seps[i + 2] != seps[i])
            ):
                n = 3
            if n and my_number_ok("".join(groups[i : i + n])):
                end = offsets[i + n - 1] + len(groups[i + n - 1])
                yield Span(offsets[i], end, Category.MY_NUMBER, "")
        # overlaps with a card candidate are settled by ``detect`` (longer wins)
        yield from _cards_in_run(m.start(), groups, seps)


def _cards_in_run(base: int, groups: list[str], seps: list[str]) -> Iterable[Span]:
    """Cards made of consecutive groups of one run (a run may hold a phone number and a
    card, or a card and a year), each with one kind of separator and a card's grouping."""
    offsets, pos = [], 0
    for g in groups:
        offsets.append(pos)
        pos += len(g) + 1
    i = 0
    while i < len(groups):
        for j in range(len(groups), i, -1):  # longest first
            part = groups[i:j]
            digits = "".join(part)
            shape = tuple(len(g) for g in part)
            if not 13 <= len(digits) <= 19 or len(set(seps[i : j - 1])) > 1:
                continue
            if len(part) > 1 and shape not in _CARD_SHAPES:
                continue
            if luhn_ok(digits) and card_prefix_ok(digits):
                start = base + offsets[i]
                yield Span(start, start + len(digits) + len(part) - 1, Category.CARD, "")
                i = j - 1
                break
        i += 1


def _ibans(s: str) -> Iterable[Span]:
    pos = 0
    while (m := _IBAN.search(s, pos)) is not None:
        # the greedy groups may run into the next word or IBAN: cut at the country's length
        # and scan on from the cut, not from the end of the match
        pos = m.start() + 1
        cand = m.group(0)
        need = IBAN_LENGTHS.get(cand[:2].upper())
        if need is None:
            continue
        count = 0
        for k, ch in enumerate(cand):
            if ch != " ":
                count += 1
            if count == need:
                end = k + 1
                if end < len(cand) and cand[end] != " ":
                    break  # ends inside a longer token
                if iban_ok(cand[:end].replace(" ", "")):
                    yield Span(m.start(), m.start() + end, Category.IBAN, "")
                    pos = m.start() + end
                break


def _ips(s: str) -> Iterable[Span]:
    for m in _IPV4.finditer(s):
        try:
            ipaddress.IPv4Address(m.group(0))
        except ValueError:
            continue
        if not _VERSION_CONTEXT.search(s[max(0, m.start() - 12) : m.start()]):
            yield Span(m.start(), m.end(), Category.IP, "")
    for m in _IPV6.finditer(s):
        cand = m.group(0)
        if not any(c.isdigit() for c in cand):
            continue
        for text in (cand, cand.rstrip(":")):
            try:
                ipaddress.IPv6Address(text)
            except ValueError:
                continue
            yield Span(m.start(), m.start() + len(text), Category.IP, "")
            break


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def _jp_number_ok(d: str) -> bool:
    """A Japanese domestic number: 10 digits (landline), 11 for mobile/IP, free dial."""
    if d.startswith(("0120", "0800", "0570")):
        return len(d) in (10, 11)
    if len(d) == 11:
        return d[:3] in ("050", "070", "080", "090")
    return len(d) == 10 and d[1] != "0"


def _phones(s: str) -> Iterable[Span]:
    for m in _PHONE_JP.finditer(s):
        d = _digits(m.group(1))
        if _jp_number_ok(d):
            yield Span(m.start(1), m.end(1), Category.PHONE, "")
    for m in _PHONE_INTL.finditer(s):
        text = m.group(0)
        # greedy groups may swallow a following number: trim groups until the length fits
        while text:
            if text.endswith(")") and text.count("(") < text.count(")"):
                text = text[:-1]  # a closing bracket of the surrounding prose
            d = _digits(text.replace("(0)", "", 1))  # +81 (0)90…: the trunk 0 in brackets
            ok = 8 <= len(d) <= 15
            if d.startswith("81"):  # Japan: 9 or 10 national digits, no trunk 0
                ok = len(d) in (11, 12) and d[2] != "0"
            if ok and text[-1].isdigit():
                yield Span(m.start(), m.start() + len(text), Category.PHONE, "")
                break
            cut = max(text.rfind(" "), text.rfind("-"), text.rfind("."))
            if cut <= 0:
                break
            text = text[:cut].rstrip(" .-(")
    for m in _PHONE_NANP.finditer(s):
        yield Span(m.start(), m.end(), Category.PHONE, "")


def _postal_codes(s: str) -> Iterable[Span]:
    for m in _POSTAL.finditer(s):
        marked = m.group(1) is not None
        if marked or (
            "-" in m.group(0)
            and (
                _POSTAL_BEFORE.search(s[max(0, m.start() - 16) : m.start()])
                or _POSTAL_AFTER.search(s[m.end() : m.end() + 6])
            )
        ):
            start = m.start() + (len(m.group(1)) if marked and m.group(1) else 0)
            yield Span(start, m.end(), Category.POSTAL_CODE, "")


# order breaks ties between overlapping candidates of the same start and length
_DETECTORS = (_emails, _ibans, _digit_runs, _ips, _phones, _postal_codes)


_IBAN_HEAD = re.compile(r"[A-Za-z]{2}[0-9]{2}")


def may_hold_pii(s: str) -> bool:
    """False when no detector can match ``s`` (already shadowed to ASCII digits), checked
    cheaply: e-mails need ``@``, IPv6 ``:``, IPv4 a dot and four digits, IBANs a country code
    and check digits, and every other category (phones, cards, My Number, postal codes) at
    least seven digits. Most prompts fail all of these, and skip the detectors."""
    if "@" in s or ":" in s:
        return True
    digits = sum(map(s.count, "0123456789"))
    if digits >= 7 or (digits >= 4 and "." in s):
        return True
    return digits >= 2 and _IBAN_HEAD.search(s) is not None


def detect(text: str, categories: Iterable[Category] | None = None) -> list[Span]:
    """Non-overlapping PII spans of ``text``, in order; longer wins where candidates overlap."""
    shadow = text.translate(SHADOW)
    if not may_hold_pii(shadow):
        return []
    wanted = set(categories) if categories is not None else set(Category)
    found: list[tuple[int, int, int, Span]] = []
    for rank, detector in enumerate(_DETECTORS):
        for sp in detector(shadow):
            if sp.category in wanted and sp.end > sp.start:
                found.append((sp.start, -(sp.end - sp.start), rank, sp))
    found.sort(key=lambda t: t[:3])
    spans: list[Span] = []
    last_end = -1
    for _, _, _, sp in found:
        if sp.start >= last_end:
            spans.append(Span(sp.start, sp.end, sp.category, text[sp.start : sp.end]))
            last_end = sp.end
    return spans
