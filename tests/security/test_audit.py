"""Audit log: append-only, capped, scrubbed of secrets and PII, readable
(engine/operations/audit.py)."""

from __future__ import annotations

import argparse
from typing import cast

import pytest
import redis.asyncio as aioredis

from engine.core.keys import audit_key
from engine.errors import EngineError
from engine.operations.audit import (
    Action,
    AuditLog,
    parse_since,
    register_audit,
)
from engine.runtime.commands import audit_command
from engine.settings import Settings

FAKE_KEY = "sk-proj-FAKEFAKEFAKEFAKE0123456789abcdef"
FAKE_GEMINI = "AIzaFAKE-not-a-real-key-000000000000000"
REGISTERED = "fake-registered-secret-42"


async def test_record_and_read_back(redis: aioredis.Redis, namespace: str) -> None:
    """Entries come back in order with their stream ids, after an exclusive since."""
    log = AuditLog(redis, namespace)
    first = await log.record(Action.SUBMIT, tenant="acme", token_id="tok_1", target="task-1")
    await log.record(Action.CANCEL, tenant="acme", token_id="tok_1", target="task-1")
    await log.record("dlq_purge", tenant="ops", token_id="tok_2", outcome="denied")
    entries = await log.read()
    assert [e.action for e in entries] == [Action.SUBMIT, Action.CANCEL, Action.DLQ_PURGE]
    assert entries[0].id == first.id and entries[2].outcome == "denied"
    after = await log.read(since=first.id)
    assert [e.action for e in after] == [Action.CANCEL, Action.DLQ_PURGE]
    assert [e.action for e in await log.read(tenant="ops")] == [Action.DLQ_PURGE]
    assert len(await log.read(limit=2)) == 2


async def test_unknown_action_is_refused(redis: aioredis.Redis, namespace: str) -> None:
    """Only the documented actions can be recorded."""
    with pytest.raises(ValueError):
        await AuditLog(redis, namespace).record("delete_everything", tenant="acme")


async def test_no_secret_or_pii_reaches_redis(redis: aioredis.Redis, namespace: str) -> None:
    """Fake keys (by shape, by field name, registered), bearer tokens and PII never hit Redis."""
    log = AuditLog(redis, namespace, secrets=lambda: [REGISTERED])
    await log.record(
        Action.CONFIG_CHANGE,
        tenant="acme",
        token_id="tok_9",
        target="providers",
        detail={
            "note": f"rotated {FAKE_KEY} and {FAKE_GEMINI}",
            "api_key": "whatever-value-0000",
            "header": "Authorization: Bearer abcdefghijklmnop",
            "by": "admin taro@example.co.jp, 090-1234-5678",
            "free": f"the value {REGISTERED} leaked",
            "nested": {"token": FAKE_KEY},
        },
    )
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(audit_key(namespace)))
    raw = b"".join(v for _, fields in entries for v in fields.values())
    for secret in (FAKE_KEY, FAKE_GEMINI, "whatever-value", "abcdefghijklmnop", REGISTERED):
        assert secret.encode() not in raw
    assert b"taro@example.co.jp" not in raw and b"090-1234-5678" not in raw
    entry = (await log.read())[0]
    assert entry.detail["api_key"] == "[REDACTED]"
    assert entry.detail["by"] == "admin <EMAIL_1>, <PHONE_1>"


async def test_stream_is_capped(redis: aioredis.Redis, namespace: str) -> None:
    """With max_len the stream stays near its bound (approximate trimming)."""
    log = AuditLog(redis, namespace, max_len=100)
    for i in range(400):
        await log.record(Action.SUBMIT, tenant="acme", target=f"t{i}")
    assert 100 <= await redis.xlen(audit_key(namespace)) < 300


def test_parse_since() -> None:
    """--since takes stream ids, unix ms, ISO times and durations; junk is a clear error."""
    now = 1_718_000_000_000
    assert parse_since("1718000000000-5") == "1718000000000-5"
    assert parse_since("1718000000000") == "1717999999999-0"
    assert parse_since("2h", now) == f"{now - 7_200_000 - 1}-0"
    assert parse_since("2024-06-10T06:13:20+00:00") == "1717999999999-0"
    with pytest.raises(EngineError, match="--since"):
        parse_since("yesterday-ish")


async def test_cli_prints_entries(
    redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """aiis audit --json prints the recorded entries (on the real redis-server)."""
    from engine.runtime.connection import connect

    client = connect(redis_url)
    try:
        await AuditLog(client, namespace).record(Action.REPLAY, tenant="ops", target="cost")
    finally:
        await client.aclose()
    parser = argparse.ArgumentParser()
    assert register_audit(parser.add_subparsers(dest="command")) == ["audit"]
    args = parser.parse_args(["audit", "--json", "--since", "1h"])
    settings = Settings(redis_url=redis_url, namespace=namespace)
    import asyncio

    code = await asyncio.to_thread(audit_command, args, settings)
    out = capsys.readouterr().out
    assert code == 0 and '"action":"replay"' in out and '"target":"cost"' in out


async def test_the_cli_shows_the_newest_entries_and_says_what_it_left_out(
    redis_url: str, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over ``--limit`` entries: ``aiis audit`` shows the newest (what an operator looking at
    the log wants after a busy hour) and says on stderr that earlier ones exist; with
    ``--since`` it pages forward from there and prints the command for the next page."""
    import asyncio

    from engine.runtime.connection import connect

    client = connect(redis_url)
    try:
        log = AuditLog(client, namespace)
        for i in range(7):
            await log.record(Action.SUBMIT, tenant="acme", target=f"task-{i}")
        await log.record(Action.CONFIG_CHANGE, tenant="ops", target="budgets")
        assert [e.target for e in await log.read_latest(3)] == ["task-5", "task-6", "budgets"]
        assert [e.target for e in await log.read_latest(2, tenant="acme")] == ["task-5", "task-6"]
        all_ids = [e.id for e in await log.read()]
    finally:
        await client.aclose()
    parser = argparse.ArgumentParser()
    register_audit(parser.add_subparsers(dest="command"))
    settings = Settings(redis_url=redis_url, namespace=namespace)

    async def run(*argv: str) -> tuple[list[str], str]:
        args = parser.parse_args(["audit", "--json", *argv])
        assert await asyncio.to_thread(audit_command, args, settings) == 0
        captured = capsys.readouterr()
        return captured.out.splitlines(), captured.err

    out, err = await run("--limit", "3")
    assert ['"target":"budgets"' in line for line in out] == [False, False, True]
    assert "5 earlier entries not shown" in err and "--limit" in err
    out, err = await run("--limit", "3", "--since", "1h")
    assert ['"target":"task-0"' in line for line in out] == [True, False, False]
    assert f"aiis audit --since {all_ids[2]}" in err
    out, err = await run("--limit", "3", "--since", all_ids[5])
    assert len(out) == 2 and err == ""
