"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) over the analytics scenario.

Screenshots go to ``$AGENTSTREAM_TEST_ARTIFACTS`` (default ``<repo>/test-artifacts/``). Without
Chromium or Playwright these tests skip, unless ``AGENTSTREAM_REQUIRE_BROWSER=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentstream.analytics.dashboard import bind, create_app, url_of
from agentstream.analytics.dashboard_auth import dashboard_token
from agentstream.process.http import BackgroundServer
from agentstream.settings import DashboardSettings
from tests.analytics_scenario import RESOURCE
from tests.integration.conftest import AnalyticsData

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("AGENTSTREAM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(
    os.environ.get("AGENTSTREAM_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts"
)


def _no_browser(reason: str) -> None:
    if os.environ.get("AGENTSTREAM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"AGENTSTREAM_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("Python playwright is not installed (pip install playwright; no browser download needed)")
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        _no_browser(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def dashboard_url(analytics_data: AnalyticsData) -> Iterator[str]:
    """A real uvicorn server (in a thread) serving the dashboard over the scenario, refreshing every second."""
    settings = analytics_data.settings.model_copy(update={"dashboard": DashboardSettings(refresh_seconds=1)})
    sock = bind("127.0.0.1", 0)
    url = url_of(sock)
    server = BackgroundServer(create_app(settings), sock, name="dashboard").start(timeout=30)
    try:
        yield url
    finally:
        server.stop(10)


@pytest.fixture
def page(browser: Any, analytics_data: AnalyticsData) -> Iterator[Any]:
    bearer = {"Authorization": f"Bearer {dashboard_token(analytics_data.settings)}"}  # it always needs one
    context = browser.new_context(viewport={"width": 1400, "height": 900}, extra_http_headers=bearer)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.set_default_timeout(20_000)
    yield page
    context.close()
    assert errors == [], f"the page logged errors: {errors}"


def _screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"{path} looks empty"
    return path


def test_failing_rollout_from_the_list_to_its_waterfall(
    page: Any, dashboard_url: str, analytics_data: AnalyticsData
) -> None:
    facts = analytics_data.facts
    page.goto(f"{dashboard_url}/rollouts")
    assert page.locator("#rollouts tbody tr").count() == 40
    assert "40 rollouts" in page.locator("#rollout-count").inner_text()
    _screenshot(page, "dashboard-rollouts")

    page.select_option("select[name=status]", "failed")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/rollouts?status=failed*")
    assert "15 rollouts" in page.locator("#rollout-count").inner_text()
    rows = page.locator("#rollouts tbody tr")
    assert rows.count() == 15
    assert all(text == "failed" for text in page.locator("#rollouts tbody .badge.s-failed").all_inner_texts())
    _screenshot(page, "dashboard-rollouts-failed")

    rollout_id = facts.failing("tool_error")[0]
    page.click(f"a[href='/rollouts/{rollout_id}']")
    page.wait_for_url(f"**/rollouts/{rollout_id}")
    assert page.locator("#failure-cause").inner_text() == "tool_error"
    spans = page.locator("#waterfall details.wf-row[data-span-id]")
    assert spans.count() == 3
    for i in range(3):
        assert spans.nth(i).locator(".bar").is_visible()
        box = spans.nth(i).locator(".bar").bounding_box()
        assert box is not None and box["width"] >= 3 and box["height"] > 5  # a bar you can see
    tool = page.locator("#waterfall details.kind-tool")
    assert tool.get_attribute("open") is not None  # a failed tool call opens by itself
    error = tool.locator(".error-box")
    assert (
        error.is_visible()
        and "queue must be one of billing, shipping, technical, account" in error.inner_text()
    )
    assert '"queue": null' in tool.locator("pre.args").first.inner_text()
    assert page.locator("#waterfall details.kind-reward").count() == 1
    # the LLM call's messages are one click away
    llm = page.locator("#waterfall details.kind-llm")
    llm.locator("summary").click()
    assert "Route the ticket. v1" in llm.locator(".wf-detail").inner_text()
    _screenshot(page, "dashboard-rollout-tool-error")


def test_ab_view_shows_both_versions_live(page: Any, dashboard_url: str) -> None:
    page.goto(f"{dashboard_url}/ab?resource={RESOURCE}")
    from playwright.sync_api import expect

    updated = page.locator("#ab-updated")
    expect(updated).to_contain_text("live · updated")  # the first fetch of the JSON API came back
    first_update = updated.inner_text()
    # it keeps refetching (refresh_seconds=1) without reloading the page
    page.evaluate("window.__marker = 'same page'")
    expect(updated).not_to_have_text(first_update, timeout=15_000)
    expect(updated).to_contain_text("live · updated")
    assert page.evaluate("window.__marker") == "same page"
    v1 = page.locator("#ab-summary tr[data-version='1']")
    v2 = page.locator("#ab-summary tr[data-version='2']")
    assert "50.0%" in v1.inner_text() and "10 / 10" in v1.inner_text()
    assert "75.0%" in v2.inner_text() and "15 / 5" in v2.inner_text() and "production" in v2.inner_text()
    points = page.locator("#ab-chart circle.pt")
    assert points.count() >= 2
    assert {points.nth(i).get_attribute("data-version") for i in range(points.count())} == {"1", "2"}
    assert page.locator("#ab-legend").inner_text().split() == ["v1", "v2"]
    page.select_option("#ab-metric", "rollouts")  # the chart redraws from the last fetch
    assert page.locator("#ab-chart text.axis").count() > 3
    page.select_option("#ab-metric", "success_rate")
    _screenshot(page, "dashboard-ab")


def test_resource_page_shows_the_diff_and_label_history(page: Any, dashboard_url: str) -> None:
    page.goto(f"{dashboard_url}/resources")
    page.click(f"a[href='/resources/{RESOURCE}']")
    page.wait_for_url(f"**/resources/{RESOURCE}")
    assert page.locator("#diff .d-del").inner_text() == "-Route the ticket."
    assert page.locator("#diff .d-add").inner_text() == "+Route the ticket to its queue."
    assert "promoted: candidate beat production" in page.locator("#label-history").inner_text()
    _screenshot(page, "dashboard-resource")
