"""Every use ``providers.transport.h2conn`` makes of h2 beyond its documented API, in one place.

h2 is declared in pyproject.toml at the range tested. Two things need more than h2's public
API, each for a measured reason (docs/providers.md, "The HTTP/2 transport"):

- a graceful GOAWAY must not end the streams it covers: h2 closes the whole connection on any
  GOAWAY and drops the bytes not yet written, and nothing public reopens it;
- counting open streams must be O(1): h2 walks every stream to count them on each new one,
  which at 1,000 streams per connection cost more than the rest of a request.

``RELIED_UPON`` names each internal member used here; tests/providers/test_h2shim.py checks
that each exists and behaves as relied upon, and fails with its name when an h2 release changes
it. Nothing else in the project touches h2 beyond its public API."""

from __future__ import annotations

from typing import Any

import h2.connection
import h2.events

# h2 internals used below (checked one by one by tests/providers/test_h2shim.py)
RELIED_UPON = (
    "H2Connection._receive_goaway_frame",  # the hook called for each GOAWAY frame received
    "H2Connection.state_machine.state",  # set back to CLIENT_OPEN after a graceful GOAWAY
    "ConnectionState.CLIENT_OPEN",
    "H2Connection._data_to_send",  # the outbound bytearray the GOAWAY hook clears
    "H2Connection.streams",  # h2's stream table, swept of closed streams when counted
    "H2Connection.send_headers reads open_outbound_streams",  # so the count below is used
    "H2Connection.highest_outbound_stream_id",
)

_SWEEP_MIN = 64  # streams in h2's table before the first sweep of the closed ones


class H2State(h2.connection.H2Connection):
    """h2's state machine, kept open through a graceful GOAWAY, with an O(1) open-stream count.

    The transport already keeps the count (``reserved``, the new stream included) and never
    exceeds the server's limit, so report that, and let h2 sweep its table of closed streams
    only when the table has doubled."""

    reserved = 0
    _sweep_at = _SWEEP_MIN

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[h2.events.Event]]:
        """A graceful GOAWAY (NO_ERROR: a front end draining, a connection's maximum age)
        promises to finish the streams up to ``last_stream_id``, so keep receiving them and keep
        our pending acknowledgements. New streams are refused by ``Connection.goaway``."""
        pending = self.data_to_send()
        frames, events = super()._receive_goaway_frame(frame)
        if frame.error_code == 0:
            self.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
            self._data_to_send[:0] = pending
        return frames, events

    @property
    def open_outbound_streams(self) -> int:
        if len(self.streams) >= self._sweep_at:
            _ = super().open_outbound_streams  # h2's own count drops closed streams as it walks
            self._sweep_at = max(_SWEEP_MIN, 2 * len(self.streams))
        return max(0, self.reserved - 1)

    @property
    def last_stream_id(self) -> int:
        """The highest stream id this side has opened (0 before the first)."""
        return self.highest_outbound_stream_id
