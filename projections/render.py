"""Terminal rendering of ``aiis stats`` and ``aiis replay --verify`` (rich tables)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from projections.replay import Difference

MAX_DIFFS_SHOWN = 50
MAX_WIDTH = 400  # columns a table may take past the console's width


def _usd(value: float) -> str:
    """``$1,234.5000``; under a cent an amount keeps its digits (``$0.0000346``)."""
    if 0 < abs(value) < 0.01:
        return "$" + f"{value:.10f}".rstrip("0")
    return f"${value:,.4f}"


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def _when(ts: int | None) -> str:
    if not ts:
        return "–"
    return dt.datetime.fromtimestamp(ts / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print(console: Console, table: Table) -> None:
    """Print a table at its natural width even past the console's (a pipe counts as 80
    columns): a header cut to "succeed…" or wrapped in two says less than a long line."""
    natural = console.measure(table, options=console.options.update_width(MAX_WIDTH)).maximum
    width = console.width
    console.width = max(width, min(natural, MAX_WIDTH))  # print(width=) cannot widen
    try:
        console.print(table)
    finally:
        console.width = width


def stats(console: Console, report: dict[str, Any]) -> None:
    q = report["queues"]
    t = Table(title="Queues (all partitions)")
    for col in (
        "priority",
        "waiting",
        "delayed",
        "in flight",
        "dead-lettered",
        "requested",
        "done",
    ):
        t.add_column(col, justify="left" if col == "priority" else "right")
    for prio, c in q["by_priority"].items():
        t.add_row(
            prio,
            *(
                _num(c[k])
                for k in ("waiting", "delayed", "in_flight", "dead_lettered", "requested", "done")
            ),
        )
    t.caption = f"dead-letter stream now holds {q['dlq_depth']:,}"
    _print(console, t)

    t = Table(title="Throughput (completed tasks)")
    for col in (
        "window",
        "requested",
        "succeeded",
        "failed",
        "dead",
        "cancelled",
        "retried",
        "completed/s",
    ):
        t.add_column(col, justify="right")
    for window, r in report["throughput"].items():
        t.add_row(
            window,
            *(
                _num(r[k])
                for k in (
                    "requested",
                    "succeeded",
                    "failed",
                    "dead_lettered",
                    "cancelled",
                    "retried",
                )
            ),
            str(r["completed_per_s"]),
        )
    _print(console, t)

    c = report["cost_today"]
    for dim in ("provider", "tenant"):
        t = Table(title=f"Cost today ({c['day']} UTC) by {dim}")
        for col in (dim, "requests", "input tok", "output tok", "cached tok", "USD", "unpriced"):
            t.add_column(col, justify="left" if col == dim else "right")
        for name, r in c[f"by_{dim}"].items():
            t.add_row(
                name,
                _num(r["requests"]),
                _num(r["input_tokens"]),
                _num(r["output_tokens"]),
                _num(r["cached_tokens"]),
                _usd(r["usd"]),
                _num(r["unpriced"]),
            )
        tot = c["total"]
        t.add_row(
            "total",
            _num(tot["requests"]),
            _num(tot["input_tokens"]),
            _num(tot["output_tokens"]),
            _num(tot["cached_tokens"]),
            _usd(tot["usd"]),
            _num(tot["unpriced"]),
            style="bold",
        )
        _print(console, t)

    t = Table(title="Providers")
    for col in (
        "provider",
        "ok",
        "fail",
        "success (window)",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "breaker",
        "top errors",
    ):
        t.add_column(
            col, justify="left" if col in ("provider", "breaker", "top errors") else "right"
        )
    for name, h in report["providers"].items():
        rate = h["window"]["success_rate"]
        lat = h["latency_ms"]
        errs = sorted(h["errors"].items(), key=lambda kv: -kv[1])[:3]
        breaker = h["breaker"] + (f" since {_when(h['breaker_ts'])}" if h["breaker_ts"] else "")
        t.add_row(
            name,
            _num(h["ok"]),
            _num(h["fail"]),
            "–" if rate is None else f"{rate:.1%}",
            _num(lat["p50"]),
            _num(lat["p95"]),
            _num(lat["p99"]),
            f"[red]{breaker}[/red]" if h["breaker"] == "opened" else breaker,
            ", ".join(f"{k} {v}" for k, v in errs),
        )
    _print(console, t)

    t = Table(title="Projections")
    for col in ("projection", "events", "lag ms", "behind", "status"):
        t.add_column(col, justify="left" if col in ("projection", "status") else "right")
    for name, s in report["projections"].items():
        status = "[red]halted: " + "; ".join(s["halted"]) + "[/red]" if s["halted"] else "ok"
        behind = f"{s['behind']:,}{'+' if s['more'] else ''}"
        t.add_row(name, _num(s["events"]), _num(s["lag_ms"]), behind, status)
    t.caption = f"task_state tracks {report['tasks_tracked']:,} tasks"
    _print(console, t)


def _short(value: Any, limit: int = 160) -> str:
    text = "(missing)" if value is None else orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def differences(console: Console, diffs: Sequence[Difference]) -> None:
    t = Table(title=f"{len(diffs)} difference(s) between live and rebuilt views")
    for col in ("partition", "projection", "key", "live", "rebuilt"):
        t.add_column(col, overflow="fold")
    for d in diffs[:MAX_DIFFS_SHOWN]:
        t.add_row(
            str(d.partition), d.projection, repr(d.key)[1:-1], _short(d.live), _short(d.rebuilt)
        )
    if len(diffs) > MAX_DIFFS_SHOWN:
        t.caption = f"… and {len(diffs) - MAX_DIFFS_SHOWN} more"
    console.print(t)
