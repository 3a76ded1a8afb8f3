"""``cost``: per UTC day, provider, model and tenant — requests, tokens and USD, from
``TaskSucceeded`` and from the router's ``attempt`` notices of *failed* calls that reported
usage (a stream that broke after the provider counted its tokens is billed all the same; those
are ``failed_billed``, not ``requests``).

A result whose price is unknown (``cost_usd: null``) is counted in ``unpriced`` with its tokens
in ``unpriced_input_tokens`` / ``unpriced_output_tokens``, never as $0. USD is summed as integer
nano-dollars (``usd_nanos``) so sums are exact and shards add up in any order. Days older than
``AIIS_PROJ_COST_DAYS`` before the newest event's day are dropped.

Entry key: ``<YYYY-MM-DD>\\x1f<provider>\\x1f<model>\\x1f<tenant>``.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

from projections.view import Envelope, Projection, Record, Shard, ViewConfig

SEP = "\x1f"
DAY_MS = 86_400_000
_EPOCH = dt.date(1970, 1, 1).toordinal()


@lru_cache(maxsize=4096)
def day_name(day: int) -> str:
    """ISO date of a day number (days since the Unix epoch, UTC)."""
    return dt.date.fromordinal(_EPOCH + day).isoformat()


def day_number(name: str) -> int:
    return dt.date.fromisoformat(name).toordinal() - _EPOCH


def to_nanos(usd: float) -> int:
    return round(usd * 1_000_000_000)


def new_record() -> dict[str, int]:
    return {
        "requests": 0,
        "cached": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "priced": 0,
        "usd_nanos": 0,
        "unpriced": 0,
        "unpriced_input_tokens": 0,
        "unpriced_output_tokens": 0,
        "failed_billed": 0,
    }


def split_key(key: str) -> tuple[str, str, str, str]:
    day, provider, model, tenant = key.split(SEP)
    return day, provider, model, tenant


class CostShard(Shard):
    __slots__ = ("days",)

    def __init__(self, config: ViewConfig, entries: dict[str, Record] | None = None) -> None:
        super().__init__(config, entries)
        self.days: dict[int, set[str]] = {}
        for key in self.entries:
            self.days.setdefault(day_number(split_key(key)[0]), set()).add(key)


def load(config: ViewConfig, entries: dict[str, Record]) -> CostShard:
    return CostShard(config, entries)


def evolve(view: CostShard, event: Envelope) -> CostShard:
    etype = event["type"]
    if etype == "TaskProgress":
        data = event["data"]
        detail = data.get("detail")
        if (
            data.get("notice") == "attempt"
            and isinstance(detail, dict)
            and isinstance(detail.get("usage"), dict)
            and detail.get("outcome") == "error"
        ):
            _billed_failure(view, event, detail)
        return view
    if etype != "TaskSucceeded":  # only calls cost; ops events included
        return view
    data = event["data"]
    rec = _record(view, event, data["provider"], data["model"])
    usage = data["usage"]
    inp, out = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
    rec["requests"] += 1
    rec["cached"] += 1 if data.get("cached") else 0
    rec["input_tokens"] += inp
    rec["output_tokens"] += out
    rec["cached_tokens"] += usage.get("cached_tokens", 0)
    rec["reasoning_tokens"] += usage.get("reasoning_tokens", 0)
    cost = data["cost_usd"]
    if cost is None:
        rec["unpriced"] += 1
        rec["unpriced_input_tokens"] += inp
        rec["unpriced_output_tokens"] += out
    else:
        rec["priced"] += 1
        rec["usd_nanos"] += to_nanos(cost)
    return view


def _record(view: CostShard, event: Envelope, provider: str, model: str) -> dict[str, int]:
    day = event["ts"] // DAY_MS
    key = SEP.join((day_name(day), provider, model, event["tenant"]))
    rec = view.entries.get(key)
    if rec is None:
        rec = view.entries[key] = new_record()
        keys = view.days.get(day)
        if keys is None:
            keys = view.days[day] = set()
            _expire(view, day)
        keys.add(key)
    view.changed.add(key)
    return rec


def _billed_failure(view: CostShard, event: Envelope, detail: dict[str, Any]) -> None:
    provider, model = detail.get("provider"), detail.get("model")
    if not isinstance(provider, str) or not isinstance(model, str):
        return
    rec = _record(view, event, provider, model)
    usage = detail["usage"]
    inp, out = _count(usage, "input_tokens"), _count(usage, "output_tokens")
    rec["failed_billed"] = rec.get("failed_billed", 0) + 1
    rec["input_tokens"] += inp
    rec["output_tokens"] += out
    rec["cached_tokens"] += _count(usage, "cached_tokens")
    rec["reasoning_tokens"] += _count(usage, "reasoning_tokens")
    cost = detail.get("cost_usd")
    if not isinstance(cost, int | float) or isinstance(cost, bool):
        rec["unpriced_input_tokens"] += inp
        rec["unpriced_output_tokens"] += out
    else:
        rec["usd_nanos"] += to_nanos(float(cost))


def _count(usage: dict[str, Any], name: str) -> int:
    """A token count from a notice (anyone can write to the log: not a number counts 0)."""
    value = usage.get(name, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _expire(view: CostShard, newest: int) -> None:
    oldest = newest - view.config.cost_days + 1
    for day in [d for d in view.days if d < oldest]:
        for key in view.days.pop(day):
            view.drop(key)


PROJECTION = Projection(
    name="cost",
    description="per UTC day, provider, model and tenant: requests, tokens, USD (unpriced apart)",
    load=load,
    evolve=evolve,
)
