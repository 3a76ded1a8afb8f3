"""The supervisor: restart backoff (pure, fake clock) and a pool that stops on a child's
configuration error instead of restarting it forever."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.runtime.embedded import free_port
from engine.runtime.supervisor import Backoff


def test_backoff_grows_while_a_child_keeps_failing() -> None:
    """Each quick death doubles the delay, up to the cap."""
    backoff = Backoff(base_s=0.5, max_s=30.0, healthy_s=60.0)
    delays = []
    now = 0.0
    for _ in range(8):
        backoff.started(now)
        now += 1.0
        delays.append(backoff.exited(now))
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_backoff_resets_after_a_healthy_period() -> None:
    """A child that ran healthy for healthy_s restarts after the first delay again."""
    backoff = Backoff(base_s=0.5, max_s=30.0, healthy_s=60.0)
    now = 0.0
    for _ in range(6):
        backoff.started(now)
        now += 1.0
        backoff.exited(now)
    backoff.started(now)
    now += 59.0
    assert backoff.exited(now) == 30.0  # not healthy long enough
    backoff.started(now)
    now += 61.0
    assert backoff.exited(now) == 1.0


@pytest.mark.slow
def test_config_error_at_start_stops_an_autoscaled_pool(redis_url: str) -> None:
    """`aiis worker --autoscale` whose workers cannot start (no key, no sandbox) exits non-zero
    with the reason, instead of restarting crash-looping workers forever."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AIIS_") and not k.endswith("_KEY")
    }
    env.update(
        AIIS_REDIS_URL=redis_url,
        AIIS_NAMESPACE=f"cfg{os.getpid()}",
        AIIS_PROVIDER="auto",
        AIIS_GATEWAY_PORT=str(free_port()),
    )
    env.pop("UNSPLASH_ACCESS_KEY", None)
    result = subprocess.run(
        [sys.executable, "-m", "engine", "worker", "--autoscale", "2:4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("aiis: error: worker-") and "no provider API key" in last, last
    assert "restarting" not in result.stderr


def test_serve_with_its_sandbox_turns_our_rate_limits_off_unless_set() -> None:
    """Against its own loopback sandbox, `aiis serve`'s workers run without our client-side
    provider rate limits (1,000 rpm capped a burst at ~18 tasks/s); a value the user set stays."""
    from engine.runtime.serving import sandbox_worker_env

    env = sandbox_worker_env({"AIIS_OPENAI_RPM": "60", "PATH": "/bin"})
    assert env["AIIS_GEMINI_RPM"] == "0" and env["AIIS_ANTHROPIC_TPM"] == "0"
    assert env["AIIS_OPENAI_RPM"] == "60" and env["PATH"] == "/bin"


def test_default_concurrency_suits_io_bound_calls() -> None:
    """The default in-flight limit per worker is sized for I/O-bound calls (docs/engine.md)."""
    from engine.settings import Settings

    assert Settings().concurrency >= 256
