"""The live status page: replicas, queue and recent jobs from GET /status, updating by itself."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import Page, Request, expect

from tests import api
from tests.chromium import artifacts_dir, require_chromium

require_chromium()

STATUS_PAGE = "/static/status.html"
JOBS_DONE_JS = """() => [...document.querySelectorAll('#replica-rows [data-field="jobs_done"]')]
    .reduce((sum, cell) => sum + Number(cell.textContent), 0)"""


def set_visibility(page: Page, state: str) -> None:
    """What the browser does when the tab goes to the back (hidden) or the front (visible)."""
    page.evaluate(
        """state => {
            Object.defineProperty(document, 'visibilityState', {value: state, configurable: true});
            document.dispatchEvent(new Event('visibilitychange'));
        }""",
        state,
    )


def status_requests(page: Page) -> list[Request]:
    seen: list[Request] = []
    page.on("request", lambda r: seen.append(r) if r.url.endswith("/status") else None)
    return seen


@pytest.mark.timeout(120)
def test_status_page_shows_replicas_and_updates_by_itself(page: Page, service: Any) -> None:
    status = api.get(service.base_url, "/status").json()
    assert len(status["replicas"]) == 2, status

    page.goto("/")
    page.click('a[href="/static/status.html"] >> nth=0')
    page.wait_for_url(f"**{STATUS_PAGE}")
    rows = page.locator("#replica-rows tr[data-replica]")
    expect(rows).to_have_count(2)
    expect(page.locator("#replica-count")).to_have_text("2")
    for replica in status["replicas"]:
        row = page.locator(f'#replica-rows tr[data-replica="{replica["replica"]}"]')
        for model in replica["models"]:
            expect(row.locator('[data-field="models"]')).to_contain_text(model)
        expect(row.locator('[data-field="state"]')).to_have_text(re.compile(r"^(busy|idle)$"))
        expect(row.locator('[data-field="last_seen"]')).to_have_text(re.compile(r"(ago|now)$"))
        expect(row.locator('[data-field="restarts"]')).to_have_text("0")
    # The broker's node, probed by the gateway, and marked as the one it uses.
    [node] = status["broker"]["nodes"]
    node_row = page.locator(f'#broker-rows tr[data-node="{node["name"]}"]')
    expect(node_row.locator('[data-field="running"]')).to_have_text("running")
    expect(node_row.locator('[data-field="connected"]')).to_have_text("this gateway")
    expect(page.locator("#broker-count")).to_have_text("1 / 1")
    expect(page.locator("#live-state")).to_have_text("Live")
    expect(page.locator("#queue-depth")).to_have_text(re.compile(r"^(\d+|\?)$"))
    before = page.evaluate(JOBS_DONE_JS)

    # A job done elsewhere shows up without reloading: jobs done goes up, the job is listed.
    job = api.submit(service.base_url, "efficientnet_lite0", "rocket.jpg")
    assert api.wait_final(service.base_url, job["job_id"])["status"] == "succeeded"
    page.wait_for_function(f"() => ({JOBS_DONE_JS})() > {before}", timeout=30_000)
    first = page.locator("#recent-rows tr").first
    expect(first).to_contain_text("efficientnet_lite0")
    expect(page.locator("#recent-rows tr")).not_to_have_count(0)
    expect(page.locator("#jobs-per-second")).not_to_have_text("0.00", timeout=10_000)
    page.screenshot(path=str(artifacts_dir() / "page-status.png"), full_page=True)


@pytest.mark.timeout(120)
def test_status_page_pauses_while_the_tab_is_hidden(page: Page) -> None:
    with page.expect_response(lambda r: r.url.endswith("/status")):
        page.goto(STATUS_PAGE)
    requests = status_requests(page)
    # Another tab comes to the front.
    set_visibility(page, "hidden")
    expect(page.locator("#live-state")).to_have_text("Paused while this tab is hidden")
    page.wait_for_timeout(500)  # a request already on its way may still finish
    requests.clear()
    page.wait_for_timeout(5_000)
    assert requests == [], [r.url for r in requests]

    # Back in front: it asks at once and carries on.
    with page.expect_request(lambda r: r.url.endswith("/status"), timeout=3_000):
        set_visibility(page, "visible")
    expect(page.locator("#live-state")).to_have_text("Live")
    page.wait_for_timeout(4_500)
    assert len(requests) >= 2, [r.url for r in requests]
