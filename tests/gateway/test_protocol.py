"""The sans-I/O protocol and token helpers: pure functions, no server."""

from __future__ import annotations

import pytest

from gateway import protocol
from gateway.auth import Authenticator, hash_token, parse_tokens, token_from
from gateway.errors import GatewayConfigError, ProtocolError


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"{not json", "bad_json"),
        (b"[1, 2]", "bad_message"),
        (b'{"op": "dance"}', "unknown_op"),
        (b'{"task_id": "x"}', "unknown_op"),
        (b'{"op": "subscribe"}', "bad_message"),
        (b'{"op": "subscribe", "task_id": "a", "tenant": "b"}', "bad_message"),
        (b'{"op": "subscribe", "tenant": "a", "since": "yesterday"}', "bad_since"),
        (b'{"op": "subscribe", "tenant": "a", "since": 5}', "bad_since"),
        (b'{"op": "subscribe", "tenant": "a", "color": "red"}', "bad_message"),
        (b'{"op": "submit", "task": "hello"}', "bad_message"),
        (b'{"op": "ping", "ref": {"a": 1}}', "bad_message"),
    ],
)
def test_bad_frames_get_a_code(frame: bytes, code: str) -> None:
    """Each malformed client frame maps to its documented error code."""
    with pytest.raises(ProtocolError) as info:
        protocol.parse(frame, 1024)
    assert info.value.code == code


def test_oversized_frame_is_refused_before_parsing() -> None:
    """A frame over the message limit is ``too_large`` even if it is valid JSON."""
    frame = b'{"op": "ping", "ref": "' + b"x" * 2000 + b'"}'
    with pytest.raises(ProtocolError) as info:
        protocol.parse(frame, 1024)
    assert info.value.code == "too_large"


def test_subscribe_parses_target_and_since() -> None:
    """A well-formed subscribe yields its target, since and ref."""
    cmd = protocol.parse(b'{"op":"subscribe","tenant":"acme","since":"12-3","ref":7}', 1024)
    assert cmd == protocol.Subscribe(protocol.Target("tenant", "acme"), "12-3", 7)
    assert protocol.parse_id("12-3") == (12, 3)
    assert protocol.parse_id("12") is None
    assert protocol.parse_id(f"{2**64}-0") is None


def test_token_table_round_trip_and_lookup() -> None:
    """A hashed token resolves to its tenant; an unknown one is refused; none is anonymous."""
    table = parse_tokens(f"{hash_token('s3cret')}=acme # comment\n{hash_token('op')}=*")
    auth = Authenticator(table)
    who = auth.authenticate("s3cret")
    assert who is not None and who.tenant == "acme" and not who.operator
    op = auth.authenticate("op")
    assert op is not None and op.operator
    assert auth.authenticate(None) is None
    with pytest.raises(ProtocolError):
        auth.authenticate("guess")
    assert "s3cret" not in repr(table)


@pytest.mark.parametrize("text", ["abc=acme", "sha256:1234=acme", f"{hash_token('x')}=bad tenant"])
def test_malformed_token_config_is_rejected(text: str) -> None:
    """A token item that is not 'sha256:<hex>=tenant' stops start-up with a clear error."""
    with pytest.raises(GatewayConfigError):
        parse_tokens(text)


def test_bearer_header_wins_over_query() -> None:
    """The Authorization header is used before ?token=."""
    assert token_from("Bearer abc", "def") == "abc"
    assert token_from(None, "def") == "def"
    assert token_from("Basic xyz", None) is None
