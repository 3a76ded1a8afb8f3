"""Pure parts of the engine: retry maths, event mapping, keys, validation, fetch order."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.crc import key_slot
from redis.exceptions import ClusterDownError, MasterDownError, ResponseError, TryAgainError

from engine.core import keys as k
from engine.core import mapper
from engine.core.events import TaskStarted, TaskStartedData
from engine.core.keys import PartitionKeys, new_task_id, partition_for_key, partition_of
from engine.core.retry import RetryPolicy, Verdict, decide, next_delay
from engine.core.store import translate_errors
from engine.core.task import validate_task
from engine.core.worker import fetch_order
from engine.errors import (
    EventDecodeError,
    InvalidTask,
    RedisCommandError,
    RedisUnavailable,
    UnknownEventType,
    UnsupportedEventVersion,
)
from tests.conftest import fast_settings

POLICY = RetryPolicy(base_s=1.0, max_s=100.0, jitter=0.0, max_attempts=5)


def test_exponential_backoff_doubles_for_rate_limit_and_network() -> None:
    """RateLimited, NetworkError and Overloaded back off exponentially."""
    for cls in ("RateLimited", "NetworkError", "Overloaded"):
        assert [next_delay(POLICY, cls, a) for a in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]


def test_linear_backoff_for_timeout() -> None:
    """ProviderTimeout backs off linearly."""
    assert [next_delay(POLICY, "ProviderTimeout", a) for a in (1, 2, 3, 4)] == [1, 2, 3, 4]


def test_no_retry_for_invalid_request_and_credits() -> None:
    """InvalidRequest, InsufficientCredits and AuthFailed are never retried."""
    for cls in ("InvalidRequest", "InsufficientCredits", "AuthFailed", "Whatever"):
        assert next_delay(POLICY, cls, 1) is None
        d = decide(POLICY, cls, 1, retry_after=None, now_ms=0, deadline_ms=10**9)
        assert d.verdict is Verdict.FAIL


def test_backoff_is_capped_and_jittered_within_bounds() -> None:
    """Delays never exceed the cap, and jitter stays within ± the configured fraction."""
    policy = RetryPolicy(base_s=1.0, max_s=10.0, jitter=0.2)
    assert next_delay(policy, "RateLimited", 30, rand=0.5) == pytest.approx(10.0)
    assert next_delay(policy, "RateLimited", 1, rand=0.0) == pytest.approx(0.8)
    assert next_delay(policy, "RateLimited", 1, rand=0.999999) == pytest.approx(1.2, abs=1e-5)


def test_retry_after_is_a_floor() -> None:
    """A provider's retry_after is honoured even when the backoff is shorter."""
    assert next_delay(POLICY, "RateLimited", 1, retry_after=7.5) == 7.5
    assert next_delay(POLICY, "RateLimited", 4, retry_after=0.5) == 8.0


def test_decide_dead_letters_when_retries_are_exhausted() -> None:
    """The last allowed attempt of a retryable error dead-letters instead of retrying."""
    d = decide(POLICY, "NetworkError", 5, retry_after=None, now_ms=0, deadline_ms=10**9)
    assert d.verdict is Verdict.DEAD and d.reason == "retries_exhausted"
    d = decide(POLICY, "NetworkError", 4, retry_after=None, now_ms=0, deadline_ms=10**9)
    assert d.verdict is Verdict.RETRY and d.delay_s == 8.0


def test_decide_fails_when_the_retry_would_pass_the_deadline() -> None:
    """No retry is scheduled past the task's deadline."""
    d = decide(POLICY, "RateLimited", 1, retry_after=30, now_ms=0, deadline_ms=10_000)
    assert d.verdict is Verdict.FAIL and d.reason == "deadline"


def test_mapper_round_trip() -> None:
    """An event encodes to stream fields and decodes back equal (id aside)."""
    event = TaskStarted(
        task_id="t1", tenant="acme", ts=123, data=TaskStartedData(attempt=2, worker="w")
    )
    fields = mapper.encode(event)
    back = mapper.decode("1-0", fields)
    assert back == event.model_copy(update={"id": "1-0"})


def test_mapper_upcasts_old_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event of an older schema version is lifted by the registered upcaster."""
    monkeypatch.setitem(mapper.CURRENT_VERSION, "TaskStarted", 2)
    monkeypatch.setitem(
        mapper.UPCASTERS, ("TaskStarted", 1), lambda d: {**d, "worker": d["worker"].upper()}
    )
    fields = mapper.entry_fields("TaskStarted", "t", "x", 1, {"attempt": 1, "worker": "w"})
    fields["v"] = "1"
    env = mapper.envelope("1-0", fields)
    assert env["v"] == 2 and env["data"]["worker"] == "W"


def test_mapper_rejects_newer_version_unknown_type_and_garbage() -> None:
    """Newer versions, unknown types and malformed entries raise, naming the event id."""
    fields = mapper.entry_fields("TaskStarted", "t", "x", 1, {"attempt": 1, "worker": "w"})
    with pytest.raises(UnsupportedEventVersion, match="9-9"):
        mapper.envelope("9-9", {**fields, "v": "7"})
    with pytest.raises(UnknownEventType, match="9-8"):
        mapper.envelope("9-8", {**fields, "type": "TaskExploded"})
    with pytest.raises(EventDecodeError, match="9-7"):
        mapper.envelope("9-7", {"type": "TaskStarted"})
    with pytest.raises(EventDecodeError):
        mapper.decode("9-6", {**fields, "data": '{"attempt": "x", "worker": "w"}'})


def test_events_are_frozen_and_strict() -> None:
    """Events reject unknown fields and cannot be mutated."""
    with pytest.raises(ValidationError):
        TaskStartedData(attempt=1, worker="w", extra=1)  # type: ignore[call-arg]
    data = TaskStartedData(attempt=1, worker="w")
    with pytest.raises(ValidationError):
        data.attempt = 2  # type: ignore[misc]


def test_task_ids_map_to_the_partition_they_were_minted_for() -> None:
    """new_task_id(p) always lands in partition p; idempotency keys map deterministically."""
    for partitions in (1, 3, 16):
        for p in range(partitions):
            assert partition_of(new_task_id(p, partitions), partitions) == p
    assert partition_for_key("a", "k", 16) == partition_for_key("a", "k", 16)


def test_all_keys_of_a_partition_share_one_cluster_slot() -> None:
    """Every script touches a single Redis Cluster slot."""
    for p in (0, 1, 7):
        keys = PartitionKeys("aiis", p).script_keys
        assert len({key_slot(k.encode()) for k in keys}) == 1
    assert key_slot(b"aiis:{p0}:log") != key_slot(b"aiis:{p1}:log")


def test_key_names_are_the_stored_format() -> None:
    """The builders spell every key exactly as stored data names it (a rename loses data)."""
    tag = PartitionKeys("aiis", 3).tag
    assert tag == "aiis:{p3}"
    assert k.vault_key(tag, "t1") == "aiis:{p3}:pii:t1"
    assert k.blob_key(tag, "t1", 2) == "aiis:{p3}:result:t1:2"
    assert k.audit_key("aiis") == "aiis:audit"
    assert k.template_key("aiis", "greet") == "aiis:tpl:greet"
    assert k.cache_keys("aiis", 5, "ab12") == ("aiis:{cache:5}:e:ab12", "aiis:{cache:5}:lru")
    assert k.ops_key("aiis") == "aiis:ops"
    assert k.autoscale_key("aiis", "h-1") == "aiis:autoscale:h-1"
    assert k.autoscale_pool_of("aiis", k.autoscale_key("aiis", "h-1").encode()) == "h-1"
    assert len({key_slot(x.encode()) for x in k.cache_keys("aiis", 5, "ab12")}) == 1
    with pytest.raises(ValueError, match="hash tag"):
        k.vault_key("aiis:p3", "t1")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"kind": "video", "input": "x"}, "kind"),
        ({"input": ""}, "input"),
        ({"input": "   "}, "input"),
        ({"input": "x" * 1001}, "input"),
        ({"input": "x", "priority": "urgent"}, "priority"),
        ({"input": 42}, "input"),
        ({"input": "x", "colour": "red"}, "colour"),
        ({"input": "x", "tenant": "a b"}, "tenant"),
        ({"input": "x", "deadline_s": -1}, "deadline_s"),
        ({"input": "x", "params": "nope"}, "params"),
        ({"kind": "chat", "input": "x"}, "input"),
        ({"kind": "chat", "input": []}, "input"),
        ({"kind": "chat", "input": [{"role": "robot", "content": "x"}]}, "input.0.role"),
        ({"kind": "chat", "input": [{"role": "system", "content": "x"}]}, "input"),
        ({"input": "x", "params": {"blob": "y" * 20_000}}, "params"),
    ],
)
def test_bad_tasks_are_rejected_naming_the_field(raw: dict[str, object], field: str) -> None:
    """Each kind of bad input is rejected with an InvalidTask naming the offending field."""
    with pytest.raises(InvalidTask) as info:
        validate_task(raw, fast_settings(max_prompt_chars=1000))
    assert info.value.field == field


def test_valid_tasks_pass_validation() -> None:
    """Good text and chat tasks validate."""
    s = fast_settings()
    assert validate_task({"input": "hello", "deadline_s": 5}, s).deadline_s == 5
    chat = {
        "kind": "chat",
        "input": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    }
    assert validate_task(chat, s).kind == "chat"


def test_fetch_order_never_starves_low() -> None:
    """One fetch in ten takes low first and one normal first; the rest go high first."""
    orders = [fetch_order(n) for n in range(1, 101)]
    assert sum(o.startswith("low") for o in orders) == 10
    assert sum(o.startswith("normal") for o in orders) == 10
    assert sum(o.startswith("high") for o in orders) == 80


@pytest.mark.parametrize(
    "exc",
    [ClusterDownError("The cluster is down"), TryAgainError("TRYAGAIN"), MasterDownError("x")],
)
def test_a_cluster_that_is_down_or_resharding_is_redis_unavailable(exc: Exception) -> None:
    """A master restarting on a cluster is transient like a dropped connection, not a bad reply."""
    with pytest.raises(RedisUnavailable), translate_errors():
        raise exc


def test_a_bad_reply_is_a_command_error_not_an_outage() -> None:
    """An ordinary error reply (a script's refusal) is not mistaken for an outage."""
    with pytest.raises(RedisCommandError) as caught, translate_errors():
        raise ResponseError("ERR something")
    assert isinstance(caught.value.__cause__, ResponseError)


def test_state_codes_name_every_status_and_the_terminal_set() -> None:
    """Each state-word code maps to the status of its name, and TERMINAL_CODES to TERMINAL."""
    from engine.core.events import TERMINAL, TERMINAL_CODES, StateCode, Status

    assert {code.status for code in StateCode} == set(Status)
    assert {code.status for code in TERMINAL_CODES} == TERMINAL
    assert {str(code) for code in TERMINAL_CODES} == set("SFXC")
