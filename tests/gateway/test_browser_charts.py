"""The dashboard's charts in a real browser (the harness of ``test_browser.py``: Debian's
chromium driven by Playwright): after a scripted run with faults, every chart shows non-empty
series whose totals equal ``aiis stats --json``, in the 15 min and the 1 h window. Screenshots
go to ``tmp/artifacts/`` (docs/testing.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.async_api import Page, async_playwright, expect

from engine.runtime.cli import main
from providers.sandbox import start_sandbox
from tests.conftest import Engine
from tests.faulty_run import faulty_run, project
from tests.gateway.conftest import MakeGateway
from tests.gateway.test_browser import CHROMIUM, FLAGS, HAVE_CHROMIUM

ARTIFACTS = Path(__file__).resolve().parents[2] / "tmp" / "artifacts"


def _legend(page: Page, chart: str, series: str) -> Any:
    return page.locator(f'#charts [data-chart="{chart}"] li[data-series="{series}"]')


async def _check(page: Page, stats: dict[str, Any]) -> None:
    """Every chart's legend totals equal the stats; the lines and the breaker mark are drawn."""
    done = stats["throughput"]["15m"]
    for outcome in ("succeeded", "dead_lettered"):
        await expect(_legend(page, "completed", outcome)).to_have_attribute(
            "data-total", str(done[outcome])
        )
        line = page.locator(f'#charts [data-chart="completed"] polyline[data-series="{outcome}"]')
        await expect(line).to_have_count(1)
    for provider, health in stats["providers"].items():
        await expect(_legend(page, "errors", provider)).to_have_attribute(
            "data-total", str(health["fail"])
        )
    cost = stats["cost_today"]
    for provider, c in cost["by_provider"].items():
        if c["usd_nanos"]:
            await expect(_legend(page, "cost_provider", provider)).to_have_attribute(
                "data-total", str(c["usd_nanos"])
            )
    for tenant, c in cost["by_tenant"].items():
        await expect(_legend(page, "cost_tenant", tenant)).to_have_attribute(
            "data-total", str(c["usd_nanos"])
        )
    for priority, q in stats["queues"]["by_priority"].items():
        await expect(_legend(page, "depth", priority)).to_have_attribute(
            "data-total", str(q["waiting"])
        )
    await expect(_legend(page, "latency", "openai:p95")).to_have_count(1)
    mark = page.locator('#charts [data-chart="errors"] line[data-mark="gemini:opened"]')
    await expect(mark).to_have_count(1)


@pytest.mark.slow
async def test_dashboard_charts_total_what_stats_says(
    engine: Engine,
    make_gateway: MakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Gemini rate-limited → OpenAI, one dead letter: the charts' totals (completions by
    outcome, failed calls per provider, USD per provider and tenant, depth now) equal `aiis
    stats --json`, with OpenAI's latency and Gemini's breaker mark, in both windows shown."""
    assert HAVE_CHROMIUM, f"{CHROMIUM} missing: run scripts/install-browser"
    settings = engine.settings
    async with start_sandbox() as sandbox:
        await faulty_run(settings, sandbox)
    await project(settings)
    monkeypatch.setenv("AIIS_REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("AIIS_NAMESPACE", settings.namespace)
    monkeypatch.setenv("AIIS_PARTITIONS", str(settings.partitions))
    monkeypatch.setenv("AIIS_DATA_DIR", str(settings.data_dir))
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["stats", "--json"]) == 0
    stats = orjson.loads(capsys.readouterr().out)
    assert stats["throughput"]["15m"]["dead_lettered"] == 1
    gateway = await make_gateway(settings, stats_interval_s=0.2)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1100})
            await page.goto(gateway.url + "/")
            await expect(page.locator("#conn")).to_have_text("live")
            await _check(page, stats)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-charts-15m.png"), full_page=True)
            await page.click('#charts button[data-window="1h"]')
            await expect(page.locator("#charts .charts-note")).to_have_text("60 × 60 s buckets")
            await _check(page, stats)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-charts-1h.png"), full_page=True)
        finally:
            await browser.close()
