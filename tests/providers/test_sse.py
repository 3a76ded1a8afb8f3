"""The sans-I/O SSE decoder: framing variants, split reads, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.errors import NetworkError
from providers.transport.wire import MAX_EVENT_BYTES, SSEDecoder, SSEEvent

STREAM = (
    b'event: message_start\ndata: {"a": 1}\n\n: comment\n\ndata: x\ndata: y\n\n'
    b'data: {"b": 2}\r\n\r\ndata:no-space\r\rdata: unterminated'
)
EXPECTED = [
    SSEEvent("message_start", b'{"a": 1}'),
    SSEEvent("message", b"x\ny"),
    SSEEvent("message", b'{"b": 2}'),
    SSEEvent("message", b"no-space"),
]


def test_framing_variants() -> None:
    """LF, CRLF and CR line ends, comments, multi-line data; an unterminated event is dropped."""
    assert SSEDecoder("p").feed(STREAM) == EXPECTED


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    """However the bytes are split across reads (CRLF halves included), the events are equal."""
    decoder = SSEDecoder("p")
    events: list[SSEEvent] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(STREAM)]:
        events += decoder.feed(STREAM[last:cut])
        last = cut
    assert events == EXPECTED


def test_oversized_line_without_newline_is_refused() -> None:
    """A server that never ends a line cannot grow the buffer without bound."""
    decoder = SSEDecoder("p")
    with pytest.raises(NetworkError):
        for _ in range(MAX_EVENT_BYTES // 65536 + 2):
            decoder.feed(b"x" * 65536)
