"""Issue 14 item 5 (config nits), through the real ``aiis config`` command: ``show`` with
nothing set prints every effective value and its source; a quoted JSON mode is accepted like
the bare one; a refused change is audited with its reason."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from engine.operations.audit import AuditLog
from engine.runtime.connection import connect

pytestmark = pytest.mark.timeout(60)


def aiis(
    redis_url: str, namespace: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIIS_")}
    full = {**base, "AIIS_REDIS_URL": redis_url, "AIIS_NAMESPACE": namespace, **env}
    return subprocess.run(
        [sys.executable, "-m", "engine", "config", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def namespace() -> str:
    return f"c{uuid.uuid4().hex[:10]}"


def test_show_with_nothing_set_prints_effective_values_and_sources(
    redis_url: str, namespace: str
) -> None:
    """On a fresh deployment ``show`` lists the PII policy, budgets, every limit and the
    partitions with their defaults; an explicit environment value is named as such."""
    out = aiis(redis_url, namespace, "show", AIIS_QUEUE_MAX_DEPTH="250")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()}
    assert "redact" in rows["pii_policy"] and "(default)" in rows["pii_policy"]
    assert "(default)" in rows["budgets"]
    assert "200000" in rows["max_prompt_chars"] and "(default)" in rows["max_prompt_chars"]
    assert "250" in rows["queue_max_depth"] and "AIIS_QUEUE_MAX_DEPTH" in rows["queue_max_depth"]
    assert "partitions" in rows
    aiis(redis_url, namespace, "set", "queue_max_depth", "300")
    again = {
        line.split()[0]: line for line in aiis(redis_url, namespace, "show").stdout.splitlines()
    }
    assert "300" in again["queue_max_depth"] and "stored in Redis" in again["queue_max_depth"]


def test_quoted_and_bare_pii_modes_are_both_accepted(redis_url: str, namespace: str) -> None:
    """``set pii_policy '"block"'`` works like ``set pii_policy block``."""
    for value in ('"block"', "block"):
        out = aiis(redis_url, namespace, "set", "pii_policy", value)
        assert out.returncode == 0, out.stderr
    shown = aiis(redis_url, namespace, "show").stdout
    assert "block" in shown


async def test_refused_change_is_audited_with_its_reason(redis_url: str, namespace: str) -> None:
    """A refused ``config set`` exits 1 and leaves an audit entry that says why."""
    out = aiis(redis_url, namespace, "set", "budgets", '{"tenants": {"acme": "lots"}}')
    assert out.returncode == 1 and "expected a number of USD" in out.stderr
    redis = connect(redis_url)
    try:
        entries = await AuditLog(redis, namespace).read()
    finally:
        await redis.aclose()
    refused = [e for e in entries if e.outcome == "error" and e.target == "budgets"]
    assert refused and "expected a number of USD" in str(refused[0].detail.get("reason"))


@pytest.mark.parametrize(
    ("value", "says"),
    [("-5", "at least 1"), ("100000001", "at most 100000000"), ("1.5", "a whole number"),
     ("lots", "a whole number")],
)  # fmt: skip
def test_a_bad_limit_is_refused_in_one_line_that_says_why(
    redis_url: str, namespace: str, value: str, says: str
) -> None:
    """``config set queue_max_depth -5``: exit 1 with one line naming the bound, no
    validation-library dump."""
    out = aiis(redis_url, namespace, "set", "queue_max_depth", value)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], out.stderr
    assert "pydantic" not in out.stderr
