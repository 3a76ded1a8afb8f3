"""End to end in a real browser: headless Chromium opens the dashboard, submits a prompt and
sees the tokens stream in and the final status. Chromium missing is a failure, not a skip
(CI installs it with scripts/install-browser)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
from playwright.async_api import async_playwright, expect

from tests.conftest import Engine
from tests.gateway.conftest import TOKENS_ENV, MakeGateway
from tests.gateway.scripted import project, scripted_run

CHROMIUM = Path("/usr/bin/chromium")
HAVE_CHROMIUM = CHROMIUM.exists()
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def test_dashboard_submits_a_prompt_and_streams_it(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """The dashboard's prompt box submits over the WebSocket and shows deltas and the status."""
    assert HAVE_CHROMIUM, f"{CHROMIUM} missing: run scripts/install-browser"
    engine.start_worker()
    gateway = await make_gateway(engine.settings, stats_interval_s=0.2)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(gateway.url + "/")
            await expect(page.locator("#conn")).to_have_text("live")
            await expect(page.locator("#who")).to_contain_text("operator")  # stats pushed
            await page.fill("#prompt", "hello from the browser")
            await page.fill("#params", '{"script": ["stream:6"]}')
            await page.click("#submit")
            await expect(page.locator("#task-status")).to_have_text("succeeded", timeout=20_000)
            streamed = " ".join(f"chunk{i}" for i in range(6))
            await expect(page.locator("#output")).to_have_text(streamed + " ")
            task_id = await page.locator("#task-id").inner_text()
            assert (await engine.client.get(task_id)).status.value == "succeeded"
            await expect(page.locator("#recent")).to_contain_text(task_id[:12], timeout=10_000)
        finally:
            await browser.close()


# screenshots of the operator panels, kept as test artifacts (CI: AIIS_TEST_ARTIFACTS)
ARTIFACTS = Path(os.environ.get("AIIS_TEST_ARTIFACTS", "test-artifacts"))


async def test_operator_panels_timeline_dead_letter_retry_and_tenant_view(
    engine: Engine, make_gateway: MakeGateway
) -> None:
    """After a run with a Gemini 429 and a dead letter: clicking the task shows the fallback in
    its timeline; retrying the dead letter from the page makes a TaskRequested with retry_of;
    a tenant token's page has no dead-letter controls and none of another tenant's tasks."""
    assert HAVE_CHROMIUM, f"{CHROMIUM} missing: run scripts/install-browser"
    os.makedirs(ARTIFACTS, exist_ok=True)
    async with scripted_run(engine) as run:
        await project(engine)
        gateway = await make_gateway(engine.settings, tokens=TOKENS_ENV, stats_interval_s=0.2)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 1400})
                await page.goto(gateway.url + "/?token=tok-ops")
                row = page.locator(f'#tasks tr[data-task-id="{run.fallback}"]')
                await row.click()
                await expect(page.locator("#tl-id")).to_have_text(run.fallback)
                await expect(page.locator("#timeline")).to_contain_text("fallback gemini → openai")
                await expect(page.locator("#tl-summary")).to_contain_text("served by openai")
                await page.screenshot(path=str(ARTIFACTS / "timeline-fallback.png"), full_page=True)

                # a row of "Recent tasks" opens its timeline too
                await page.locator(f'#recent tr[data-task-id="{run.dead}"]').click()
                await expect(page.locator("#tl-id")).to_have_text(run.dead)
                await expect(page.locator("#tl-summary")).to_contain_text("retries_exhausted")

                await expect(page.locator("#dlq")).to_contain_text(run.dead)
                await page.check(f'.dlq-pick[value="{run.dead}"]')
                await page.click("#dlq-retry")
                await expect(page.locator("#dlq-msg")).to_contain_text("retried")
                await page.screenshot(path=str(ARTIFACTS / "dlq-retried.png"), full_page=True)
                message = await page.locator("#dlq-msg").inner_text()
                new_id = message.rsplit(" as ", 1)[1].split(",")[0].strip()

                tenant = await browser.new_page(viewport={"width": 1280, "height": 1200})
                await tenant.goto(gateway.url + "/?token=tok-acme")
                await expect(tenant.locator(f'#tasks tr[data-task-id="{run.dead}"]')).to_have_count(
                    1
                )
                await expect(tenant.locator("#dlq-panel")).to_have_count(0)
                await expect(tenant.locator("#tasks")).not_to_contain_text(run.plain[1][:12])
                await tenant.screenshot(path=str(ARTIFACTS / "tenant-view.png"), full_page=True)
            finally:
                await browser.close()
        entry = None
        for p in range(engine.settings.partitions):
            for _, f in await engine.client.store.entries(engine.client.store.keys(p).log):
                if f[b"task"].decode() == new_id and f[b"type"] == b"TaskRequested":
                    entry = orjson.loads(f[b"data"])
    assert entry is not None and entry["retry_of"] == run.dead
