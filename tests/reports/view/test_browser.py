"""End to end in a real headless Chromium (Debian's `chromium`, driven by Playwright):
runs list -> run -> decision -> transcript -> compare, asserting on rendered text.

Playwright is pointed at the system executable (`executable_path`); nothing is downloaded.
`make test` installs the `chromium` package when it is missing, so this test runs in CI.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.reports.view.conftest import RUN_A, RUN_B, Viewer
from tests.run_fixtures import LLM

CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_executable() -> str:
    """The system Chromium binary (HARNESS_CHROMIUM overrides); fails loudly when absent."""
    override = os.environ.get("HARNESS_CHROMIUM")
    for path in (override, *CANDIDATES, shutil.which("chromium")):
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    raise RuntimeError(
        "no Chromium found: `apt-get install -y chromium` (make test does it) "
        "or set HARNESS_CHROMIUM to the executable"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=chromium_executable(),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    p = context.new_page()
    p.set_default_timeout(30_000)
    yield p
    context.close()


def test_runs_to_transcript_to_compare(viewer: Viewer, page: Page) -> None:
    # 1. Runs list: newest first, the sweep with its trials and their failed/skipped policies.
    page.goto(viewer.base + "/")
    expect(page.locator("h1")).to_have_text("Runs")
    body = page.locator("body")
    expect(body).to_contain_text("Sweep delta_sweep (2 trials)")
    expect(body).to_contain_text("(failed)")
    expect(body).to_contain_text("(skipped)")

    # 2. Run page: the report with its verdict first.
    page.locator(f'a[href="/run?id={RUN_A}"]').click()
    expect(page.locator("#verdict")).to_contain_text("Per decision,")
    expect(page.locator("#verdict")).to_contain_text("As a portfolio")
    expect(page.locator("#pairs")).to_contain_text("Paired differences per decision")

    # 3. From an LLM decision in the report to its transcript (prompt, answer, reasoning).
    page.locator(f"#llm-{LLM} + p + table a").first.click()
    expect(page.locator("h1")).to_contain_text(f"Transcript: {LLM} at")
    expect(page.locator("body")).to_contain_text("You sell weekly covered calls")
    expect(page.locator("body")).to_contain_text("Thinking about")
    expect(page.locator("body")).to_contain_text("prompt + 40 completion tokens")

    # 4. Up to the decision: every candidate with its reward and who chose it.
    page.locator("nav.crumbs a", has_text="decision").click()
    expect(page.locator("h1")).to_contain_text("Decision at")
    expect(page.locator("tr.best")).to_contain_text("best in hindsight")
    expect(page.locator("body")).to_contain_text("DO_NOTHING")

    # 5. Decision browser with the disagreement filter.
    page.goto(f"{viewer.base}/decisions?run={RUN_A}")
    page.locator('input[name="disagree"]').check()
    page.locator('select[name="policy"]').select_option(LLM)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("body")).to_contain_text(f"best in hindsight minus {LLM}'s reward")
    page.locator('table a[href^="/transcript"]').first.click()
    expect(page.locator("h1")).to_contain_text(f"Transcript: {LLM} at")

    # 6. Compare the two runs: changed decisions side by side, prompt diff, both answers.
    page.goto(viewer.base + "/compare")
    page.locator('select[name="a"]').select_option(RUN_A)
    page.locator('select[name="b"]').select_option(RUN_B)
    page.get_by_role("button", name="Compare").click()
    expect(page.locator("body")).to_contain_text(f"{LLM}: ")
    expect(page.locator("body")).to_contain_text("decisions changed")
    expect(page.locator("body")).to_contain_text("Prompt diff (A → B)")
    expect(page.locator("body")).to_contain_text("+Prompt covered_call_v2@bbbb2222")
    expect(page.locator("body")).to_contain_text('"action": "SELL_CALL"')
