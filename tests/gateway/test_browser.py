"""End to end in a real browser: headless Chromium opens the dashboard, submits a prompt and
sees the tokens stream in and the final status. Chromium missing is a failure, not a skip
(CI installs it with scripts/install-browser)."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import async_playwright, expect

from tests.conftest import Engine
from tests.gateway.conftest import MakeGateway

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
