"""``providers.transport.h2shim`` against the installed h2: each h2 internal the HTTP/2
transport relies on exists and behaves as relied upon. When an h2 release changes one, these
fail with its name (the member, as spelled in ``RELIED_UPON``) instead of every provider call
failing later."""

from __future__ import annotations

from typing import Any

import h2
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from hyperframe.frame import GoAwayFrame, PingFrame

from providers.transport.h2shim import RELIED_UPON, H2State

_VERSION = f"h2 {h2.__version__}"
_REQUEST = [(b":method", b"GET"), (b":authority", b"x"), (b":scheme", b"http"), (b":path", b"/")]


def _client() -> H2State:
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    return H2State(config)


def _server() -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    return h2.connection.H2Connection(config)


def _pair() -> tuple[H2State, h2.connection.H2Connection]:
    """A client and a server past the preface and the settings exchange."""
    client, server = _client(), _server()
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def _missing(members: tuple[str, ...], roots: dict[str, Any]) -> list[str]:
    """The attribute paths of ``members`` (the ones without a space) not found from ``roots``."""
    missing = []
    for member in members:
        if " " in member:  # a behaviour, checked by its own test below
            continue
        head, *path = member.split(".")
        value = roots.get(head)
        for name in path:
            value = getattr(value, name, None)
        if value is None:
            missing.append(member)
    return missing


def _roots() -> dict[str, Any]:
    """h2's own connection (not the shim's subclass, which defines some of the members)."""
    config = h2.config.H2Configuration(client_side=True)
    return {
        "H2Connection": h2.connection.H2Connection(config),
        "ConnectionState": h2.connection.ConnectionState,
    }


def test_every_internal_member_relied_upon_exists() -> None:
    """Each h2 internal named in RELIED_UPON is still there in the installed h2."""
    missing = _missing(RELIED_UPON, _roots())
    assert not missing, (
        f"{_VERSION} no longer has {', '.join(missing)} (providers/transport/h2shim.py)"
    )


def test_a_missing_member_is_reported_by_its_name() -> None:
    """The existence check names the member an h2 release removed or renamed."""

    class Renamed:  # h2 with its outbound buffer renamed
        state_machine = h2.connection.H2ConnectionStateMachine()
        streams: dict[int, object] = {}  # noqa: RUF012
        highest_outbound_stream_id = 0

        def _receive_goaway_frame(self) -> None: ...

    roots = {**_roots(), "H2Connection": Renamed()}
    assert _missing(RELIED_UPON, roots) == ["H2Connection._data_to_send"]


def test_the_internals_have_the_types_relied_upon() -> None:
    """The outbound buffer is a bytearray, the stream table a dict, the state an enum member."""
    client = _roots()["H2Connection"]
    assert isinstance(client._data_to_send, bytearray), (
        f"{_VERSION}: H2Connection._data_to_send is no longer a bytearray"
    )
    assert isinstance(client.streams, dict), f"{_VERSION}: H2Connection.streams is not a dict"
    assert isinstance(client.state_machine.state, h2.connection.ConnectionState), (
        f"{_VERSION}: H2Connection.state_machine.state is not a ConnectionState"
    )
    assert callable(client._receive_goaway_frame), (
        f"{_VERSION}: H2Connection._receive_goaway_frame is not a method"
    )


def test_a_graceful_goaway_lets_covered_streams_finish_and_keeps_pending_bytes() -> None:
    """After a NO_ERROR GOAWAY the stream it covers is still answered, and an acknowledgement
    queued just before the GOAWAY is still sent."""
    client, server = _pair()
    client.send_headers(1, _REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    goaway = GoAwayFrame(0, last_stream_id=1, error_code=0)
    server.send_headers(1, [(b":status", b"200")])
    server.send_data(1, b"answer", end_stream=True)
    ping = PingFrame(0, opaque_data=b"12345678")
    try:
        events = client.receive_data(ping.serialize() + goaway.serialize() + server.data_to_send())
    except h2.exceptions.ProtocolError as exc:
        pytest.fail(
            f"{_VERSION}: a graceful GOAWAY closed the connection ({exc!r}): "
            "H2Connection._receive_goaway_frame is no longer called, or "
            "H2Connection.state_machine.state no longer reopens it"
        )
    kinds = [type(event).__name__ for event in events]
    assert kinds == [
        "PingReceived",
        "ConnectionTerminated",
        "ResponseReceived",
        "DataReceived",
        "StreamEnded",
    ], f"{_VERSION}: H2Connection._receive_goaway_frame gave {kinds}"
    ack = PingFrame(0, opaque_data=b"12345678", flags=["ACK"]).serialize()
    assert client.data_to_send().startswith(ack), (
        f"{_VERSION}: the bytes queued before a GOAWAY were lost: "
        "H2Connection._data_to_send is no longer the buffer the GOAWAY hook clears"
    )


def test_an_error_goaway_still_closes_the_connection() -> None:
    """Only a NO_ERROR GOAWAY is kept open: after any other, h2 refuses the streams' frames."""
    client, server = _pair()
    client.send_headers(1, _REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(b":status", b"200")], end_stream=True)
    goaway = GoAwayFrame(0, last_stream_id=1, error_code=2)  # INTERNAL_ERROR
    with pytest.raises(h2.exceptions.ProtocolError):
        client.receive_data(goaway.serialize() + server.data_to_send())


def test_send_headers_reads_the_shims_open_stream_count() -> None:
    """h2 checks a new stream against the server's limit with ``open_outbound_streams``, so the
    transport's O(1) count is the one used (h2's own would walk every stream)."""
    client, _ = _pair()
    client.reserved = client.remote_settings.max_concurrent_streams + 1  # this stream included
    with pytest.raises(h2.exceptions.TooManyStreamsError):
        client.send_headers(1, _REQUEST, end_stream=True)
        pytest.fail(
            f"{_VERSION}: H2Connection.send_headers no longer reads open_outbound_streams: "
            "the O(1) count of providers/transport/h2shim.py is not used"
        )


def test_the_stream_table_is_swept_of_closed_streams() -> None:
    """h2's table of streams stays bounded over many finished requests, and the highest stream
    id opened is reported."""
    client, server = _pair()
    for sid in range(1, 2 * 300, 2):
        client.reserved = 1
        client.send_headers(sid, _REQUEST, end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(sid, [(b":status", b"204")], end_stream=True)
        client.receive_data(server.data_to_send())
        client.reserved = 0
    assert len(client.streams) <= 64, (
        f"{_VERSION}: {len(client.streams)} closed streams kept: H2Connection.streams is no "
        "longer swept by H2Connection.open_outbound_streams"
    )
    assert client.last_stream_id == 599, (
        f"{_VERSION}: H2Connection.highest_outbound_stream_id is {client.last_stream_id}, not 599"
    )


def test_no_other_module_touches_h2_internals() -> None:
    """Only the transport's h2shim.py subclasses h2's connection or names its internals."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    internals = ("_receive_goaway_frame", "_data_to_send", "_open_streams", "state_machine",
                 "highest_outbound_stream_id", "H2Connection)")  # fmt: skip
    offenders = [
        f"{path.relative_to(root)}: {name}"
        for package in ("engine", "projections", "providers", "gateway")
        for path in sorted((root / package).rglob("*.py"))
        if path.name != "h2shim.py"
        for name in internals
        if name in path.read_text(encoding="utf-8")
    ]
    assert not offenders, f"h2 internals outside providers/transport/h2shim.py: {offenders}"
