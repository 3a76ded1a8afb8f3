"""The sans-I/O SSE decoder: framing variants, split reads, bounds; and the reader's turns."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from providers.errors import NetworkError
from providers.transport.wire import EAGER_EVENTS, MAX_EVENT_BYTES, SSEDecoder, SSEEvent, sse_events

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


async def test_a_burst_lets_the_first_tokens_commit_go_out_before_the_rest_is_parsed() -> None:
    """A whole answer in one read: once the consumer took the first event, whatever it woke
    (the worker's outbox, writing the first token) runs before the next events are handed
    over, not after the last one."""
    burst = b"".join(b"data: %d\n\n" % i for i in range(12))

    async def body() -> object:
        yield burst

    response = httpx.Response(200, content=body())
    order: list[str] = []
    woken = False
    async for event in sse_events(response, 5.0, "p"):
        order.append(event.data.decode())
        if not woken:
            woken = True
            asyncio.get_running_loop().call_soon(order.append, "commit")
    assert order[:3] == ["0", "commit", "1"]
    assert order[3:] == [str(i) for i in range(2, 12)]
    assert EAGER_EVENTS < 12  # past the first events, a burst is read back to back
