"""The four views' evolve functions, one behaviour at a time (pure: no Redis)."""

from __future__ import annotations

from projections import histogram
from projections.view import ViewConfig
from projections.views import cost, provider_health, queue_length, task_state

from .conftest import error, requested, succeeded
from .events import env

CFG = ViewConfig()
T0 = 1_700_000_000_000


def _apply(evolve, view, events):  # type: ignore[no-untyped-def]
    for i, e in enumerate(events):
        e["id"] = f"{i + 1}-0"
        view = evolve(view, e)
    return view


def test_queue_length_follows_a_task_through_retry_and_cancel() -> None:
    """Waiting → in flight → delayed → waiting → cancelled moves one task between counters."""
    v = queue_length.load(CFG, {})
    started = {"attempt": 1, "worker": "w"}
    steps = [
        (env("TaskRequested", "a", requested("high")), (1, 0, 0)),
        (env("TaskStarted", "a", started), (0, 0, 1)),
        (
            env(
                "TaskRetryScheduled",
                "a",
                {"attempt": 1, "delay_ms": 5, "due_ms": 5, "error": error()},
            ),
            (0, 1, 0),
        ),
        (env("TaskRequeued", "a", {"attempt": 1, "reason": "retry_due"}), (1, 0, 0)),
        (env("TaskCancelled", "a", {"attempt": 1, "stage": "queued"}), (0, 0, 0)),
    ]
    for event, (waiting, delayed, in_flight) in steps:
        v = queue_length.evolve(v, event)
        q = v.entries["q:high"]
        assert (q["waiting"], q["delayed"], q["in_flight"]) == (waiting, delayed, in_flight)
    assert "~live:a" not in v.entries
    assert v.entries["q:high"]["done"] == 1


def test_queue_length_counts_dead_letters_and_reclaims_once() -> None:
    """A reclaimed task is in flight once; dead-lettering it counts one dead letter."""
    v = queue_length.load(CFG, {})
    v = _apply(
        queue_length.evolve,
        v,
        [
            env("TaskRequested", "a", requested()),
            env("TaskStarted", "a", {"attempt": 1, "worker": "w"}),
            env("TaskStarted", "a", {"attempt": 2, "worker": "w2", "reclaimed": True}),
        ],
    )
    assert v.entries["q:normal"]["in_flight"] == 1
    v = queue_length.evolve(
        v, env("TaskDeadLettered", "a", {"attempt": 2, "reason": "max_deliveries"})
    )
    assert v.entries["q:normal"]["in_flight"] == 0
    assert v.entries["q:normal"]["dead_lettered"] == 1


def test_cost_counts_unknown_prices_apart_and_never_as_zero() -> None:
    """A null cost adds to ``unpriced`` and its tokens, not to USD or ``priced``."""
    v = cost.load(CFG, {})
    v = cost.evolve(v, env("TaskSucceeded", "a", succeeded(cost=None), ts=T0))
    v = cost.evolve(v, env("TaskSucceeded", "b", succeeded(cost=0.5), ts=T0))
    (rec,) = v.entries.values()
    assert rec["requests"] == 2
    assert rec["priced"] == 1 and rec["unpriced"] == 1
    assert rec["usd_nanos"] == 500_000_000
    assert rec["unpriced_input_tokens"] == 10


def test_cost_keys_by_utc_day_and_drops_old_days() -> None:
    """Events a day apart land in two days; days beyond the retention are dropped."""
    v = cost.load(ViewConfig(cost_days=2), {})
    day = 86_400_000
    for i in range(3):
        v = cost.evolve(v, env("TaskSucceeded", f"t{i}", succeeded(), ts=T0 + i * day))
    days = sorted(k.split(cost.SEP)[0] for k in v.entries)
    assert days == [cost.day_name(T0 // day + 1), cost.day_name(T0 // day + 2)]


def test_task_state_keeps_last_error_and_retention_by_event_time() -> None:
    """A failed task keeps its error; terminal tasks older than the retention are evicted when
    later events arrive, running ones are kept."""
    v = task_state.load(ViewConfig(task_retention_ms=10_000), {})
    v = _apply(
        task_state.evolve,
        v,
        [
            env("TaskRequested", "old", requested(), ts=T0),
            env("TaskRequested", "live", requested(), ts=T0),
            env("TaskStarted", "old", {"attempt": 1, "worker": "w"}, ts=T0),
            env("TaskFailed", "old", {"attempt": 1, "error": error("InvalidRequest")}, ts=T0 + 1),
        ],
    )
    assert v.entries["old"]["status"] == "failed"
    assert v.entries["old"]["error"]["error_class"] == "InvalidRequest"
    v = task_state.evolve(v, env("TaskRequested", "new", requested(), ts=T0 + 20_000, eid="9-0"))
    assert "old" not in v.entries and "old" in v.changed
    assert set(v.entries) == {"live", "new"}


def test_task_state_caps_records_oldest_terminal_first() -> None:
    """Past the per-shard cap the oldest finished task goes first."""
    v = task_state.load(ViewConfig(task_max=100), {})
    for i in range(101):
        v = task_state.evolve(
            v, env("TaskCancelled", f"t{i:03}", {"attempt": 0, "stage": "queued"}, ts=T0 + i)
        )
    assert len(v.entries) == 100
    assert "t000" not in v.entries


def test_provider_health_window_rate_and_breaker() -> None:
    """Success rate counts only the window's buckets (event time); breaker follows notices."""
    cfg = ViewConfig(health_bucket_ms=1000, health_buckets=2)
    v = provider_health.load(cfg, {})
    fail = {"attempt": 1, "error": error("ProviderTimeout", "p")}
    v = provider_health.evolve(v, env("TaskFailed", "a", fail, ts=0))
    v = provider_health.evolve(v, env("TaskSucceeded", "b", succeeded(provider="p"), ts=5000))
    v = provider_health.evolve(
        v,
        env(
            "TaskProgress",
            "b",
            {"attempt": 1, "notice": "circuit_opened", "detail": {"provider": "p"}},
            ts=5001,
        ),
    )
    rec = v.entries["p"]
    assert rec["ok"] == 1 and rec["fail"] == 1
    assert list(rec["win"]) == ["5"]  # the failure's bucket fell out of the 2-bucket window
    assert rec["breaker"] == "opened" and rec["breaker_ts"] == 5001
    v = provider_health.evolve(
        v,
        env(
            "TaskProgress",
            "c",
            {"attempt": 1, "notice": "mystery", "detail": {"provider": "p"}},
            ts=6000,
        ),
    )
    assert v.entries["p"]["breaker"] == "opened"  # unknown notices change nothing


def test_provider_health_does_not_blame_the_provider_for_invalid_requests() -> None:
    """InvalidRequest is counted by class but not as a provider failure."""
    v = provider_health.load(CFG, {})
    v = provider_health.evolve(
        v, env("TaskFailed", "a", {"attempt": 1, "error": error("InvalidRequest", "p")})
    )
    assert v.entries["p"]["fail"] == 0
    assert v.entries["p"]["errors"] == {"InvalidRequest": 1}


def test_histogram_percentiles_merge_across_shards() -> None:
    """Merged histograms give the percentiles of the union, within one bin (≈9 %)."""
    a: dict[str, int] = {}
    b: dict[str, int] = {}
    for ms in range(1, 501):
        histogram.add(a, ms)
    for ms in range(501, 1001):
        histogram.add(b, ms)
    merged = histogram.merge([a, b])
    p50, p99 = histogram.percentile(merged, 0.5), histogram.percentile(merged, 0.99)
    assert p50 is not None and 500 <= p50 <= 500 * 1.1
    assert p99 is not None and 990 <= p99 <= 990 * 1.1
    assert histogram.percentile({}, 0.5) is None
