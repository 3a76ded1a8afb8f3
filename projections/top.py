"""``aiis top``: a live terminal view of the deployment — queues, throughput, providers and
their breakers, the latest failures — redrawn every second until ``q`` or Ctrl-C.

The figures are ``aiis stats``'s (``projections.stats.gather``); the latest failures are the
newest dead letters (the dead-letter streams) and failed tasks (the task search). Keys are read
with the terminal in cbreak mode, restored on every way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Any

import orjson
import redis.asyncio as aioredis
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from engine.core.store import translate_errors
from engine.settings import Settings
from projections import search
from projections.keys import dlq_key
from projections.stats import gather
from projections.storage import ShardStore

FAILURES = 8  # latest failures shown


async def failures(redis: aioredis.Redis, namespace: str, partitions: int) -> list[dict[str, Any]]:
    """The newest dead letters and failed tasks, newest first."""
    out: list[dict[str, Any]] = []
    with translate_errors():
        for p in range(partitions):
            rows: Any = await redis.xrevrange(dlq_key(namespace, p), count=FAILURES)
            for _, f in rows:
                fields = {_s(k): _s(v) for k, v in f.items()}
                out.append(
                    {
                        "ts": int(fields.get("ts") or 0),
                        "task_id": fields.get("task", ""),
                        "tenant": fields.get("tenant", ""),
                        "status": "dead_lettered",
                        "why": _error_text(fields.get("error", "")) or fields.get("reason", ""),
                    }
                )
    page = await search.search(
        redis, namespace, partitions, search.Query(tenant=None, status="failed", limit=FAILURES)
    )
    for t in page.tasks:
        error = t.get("error") or {}
        out.append(
            {
                "ts": t.get("finished_ts") or t.get("updated_ts") or 0,
                "task_id": t["task_id"],
                "tenant": t.get("tenant") or "",
                "status": "failed",
                "why": f"{error.get('error_class', '')}: {error.get('message', '')}",
            }
        )
    out.sort(key=lambda r: r["ts"], reverse=True)
    return out[:FAILURES]


def _s(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _error_text(raw: str) -> str:
    """A dead letter's ``error`` field: JSON of its data (``{"error": {...}}``) or plain text."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return f"{error.get('error_class', '')}: {error.get('message', '')}"
    return raw


def frame(report: dict[str, Any], failed: list[dict[str, Any]], n: int, now: dt.datetime) -> Group:
    """One screen of ``aiis top``."""
    q = report["queues"]
    head = Text.assemble(
        ("aiis top", "bold"),
        f"  {now:%H:%M:%S} UTC  refresh {n}  ",
        ("q", "bold"),
        " or Ctrl-C quits",
    )
    queues = Table(title="Queues", title_justify="left", expand=True)
    for col in ("priority", "waiting", "delayed", "in flight", "dead-lettered"):
        queues.add_column(col, justify="left" if col == "priority" else "right")
    for prio, c in q["by_priority"].items():
        queues.add_row(prio, *(str(c[k]) for k in ("waiting", "delayed", "in_flight")), "")
    queues.add_row("dead letters now", "", "", "", str(q["dlq_depth"]))

    rate = Table(title="Throughput", title_justify="left", expand=True)
    for col in ("window", "requested", "succeeded", "failed", "dead", "completed/s"):
        rate.add_column(col, justify="right")
    for window, r in report["throughput"].items():
        rate.add_row(
            window,
            *(str(r[k]) for k in ("requested", "succeeded", "failed", "dead_lettered")),
            str(r["completed_per_s"]),
        )

    prov = Table(title="Providers", title_justify="left", expand=True)
    for col in ("provider", "breaker", "success", "ok", "fail", "p95 ms"):
        prov.add_column(col, justify="left" if col in ("provider", "breaker") else "right")
    for name, p in report["providers"].items():
        breaker = p.get("breaker") or "closed"
        style = "red bold" if breaker == "opened" else "yellow" if breaker == "half_open" else ""
        rate_ = p["window"]["success_rate"]
        prov.add_row(
            name,
            Text(breaker, style=style),
            "–" if rate_ is None else f"{100 * rate_:.1f} %",
            str(p["ok"]),
            str(p["fail"]),
            "–" if p["latency_ms"]["p95"] is None else str(p["latency_ms"]["p95"]),
        )
    if not report["providers"]:
        prov.add_row("no provider calls yet", "", "", "", "", "")

    fails = Table(title="Latest failures", title_justify="left", expand=True)
    for col in ("when", "task", "tenant", "status", "why"):
        fails.add_column(col, overflow="ellipsis", no_wrap=col != "why")
    for f in failed:
        when = (
            dt.datetime.fromtimestamp(f["ts"] / 1000, dt.UTC).strftime("%H:%M:%S")
            if f["ts"]
            else ""
        )
        fails.add_row(when, f["task_id"][:12], f["tenant"], f["status"], f["why"][:120])
    if not failed:
        fails.add_row("", "none", "", "", "")
    return Group(head, queues, rate, prov, fails)


@contextlib.contextmanager
def _cbreak(fd: int | None) -> Iterator[None]:
    """Keys arrive one at a time (Ctrl-C still signals); the terminal is restored after."""
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_top(
    redis: aioredis.Redis,
    settings: Settings,
    store: ShardStore,
    *,
    interval_s: float = 1.0,
    console: Console | None = None,
) -> int:
    """Redraw every ``interval_s`` until ``q`` on stdin, SIGINT or SIGTERM; returns 0."""
    console = console or Console()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None

    def key() -> None:
        assert fd is not None
        data = os.read(fd, 64)
        if not data or b"q" in data.lower():  # end of input quits too
            stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with _cbreak(fd), Live(console=console, auto_refresh=False, screen=False) as live:
        if fd is not None:
            loop.add_reader(fd, key)
        try:
            n = 0
            while not stop.is_set():
                n += 1
                now = dt.datetime.now(dt.UTC)
                report = await gather(
                    store,
                    settings.partitions,
                    int(now.timestamp() * 1000),
                    now.date().isoformat(),
                )
                failed = await failures(redis, settings.namespace, settings.partitions)
                live.update(frame(report, failed, n, now), refresh=True)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval_s):
                        await stop.wait()
        finally:
            if fd is not None:
                loop.remove_reader(fd)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    return 0
