"""The gateway: WebSocket fan-out of the event log, the HTTP task API, SSE and the dashboard.

One process reads every partition's event log with a single XREAD loop (``hub``) and fans the
events out to its local WebSocket/SSE subscribers. See docs/gateway.md.
"""

from gateway.server import Gateway, run_gateway

__all__ = ["Gateway", "run_gateway"]
