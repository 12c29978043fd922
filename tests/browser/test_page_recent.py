""" "Your recent jobs": kept in localStorage across reloads, each linking back to its result."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import Page, expect

from tests.chromium import (
    RESULT_TIMEOUT_MS,
    artifacts_dir,
    is_post_to_classifications,
    open_page,
    require_chromium,
)

require_chromium()


def submit(page: Page, model: str, image: str) -> str:
    page.select_option("#model-select", model)
    page.click(f'[data-image="{image}"]')
    with page.expect_response(is_post_to_classifications) as posted:
        page.click("#submit-button")
    assert posted.value.status == 202, posted.value.text()
    job_id: str = posted.value.json()["job_id"]
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=RESULT_TIMEOUT_MS)
    return job_id


@pytest.mark.timeout(120)
def test_recent_job_survives_a_reload_and_opens_its_result(page: Page) -> None:
    open_page(page)
    expect(page.locator("#recent-empty")).to_be_visible()
    job_id = submit(page, "efficientnet_lite1", "coffee.jpg")
    item = page.locator(f'#recent-jobs .recent-item[data-job-id="{job_id}"]')
    expect(item).to_contain_text("succeeded")

    # A fresh load of the plain page: the list comes back from localStorage.
    open_page(page)
    expect(page.locator("#job-id")).to_be_empty()
    expect(page.locator("#recent-jobs .recent-item")).to_have_count(1)
    expect(item).to_contain_text("coffee.jpg")
    expect(item).to_contain_text("EfficientNet-Lite1")
    expect(item).to_contain_text("succeeded")
    expect(item.locator("time")).to_have_text(re.compile(r"\d{1,2}:\d{2}:\d{2}"))
    page.screenshot(path=str(artifacts_dir() / "page-recent.png"), full_page=True)

    # Its link opens the result, and puts the job's model and image back in the form.
    item.locator("a").click()
    page.wait_for_url(f"**/?job={job_id}")
    expect(page.locator("#job-id")).to_have_text(job_id)
    expect(page.locator("#job-status")).to_have_text("succeeded")
    rows = page.locator("#result-chart .bar-row")
    expect(rows).to_have_count(5)
    expect(rows.first).to_have_attribute("data-label", "espresso")
    # The version that ran is named (the job asked for the bare name, its default version).
    expect(page.locator("#job-subject")).to_have_text("EfficientNet-Lite1 (version 1) · coffee.jpg")
    expect(page.locator("#model-select")).to_have_value("efficientnet_lite1")
    expect(page.locator('input[name="image"][value="coffee.jpg"]')).to_be_checked()
    expect(page.locator("#error-message")).to_be_hidden()

    # Reloading that address shows the same job again.
    page.reload()
    expect(page.locator("#job-id")).to_have_text(job_id)
    expect(rows).to_have_count(5)


@pytest.mark.timeout(120)
def test_recent_list_is_capped_at_20_and_can_be_cleared(page: Page) -> None:
    open_page(page)
    seeded = [
        {
            "job_id": f"{i:032x}",
            "model": "efficientnet_lite0",
            "image": f"old-{i}.jpg",
            "submitted_at": 1_700_000_000 + i,
            "status": "succeeded",
        }
        for i in range(20, 0, -1)  # newest first, as the page keeps them
    ]
    page.evaluate("list => localStorage.setItem('imgq.recentJobs', JSON.stringify(list))", seeded)
    open_page(page)
    items = page.locator("#recent-jobs .recent-item")
    expect(items).to_have_count(20)

    job_id = submit(page, "efficientnet_lite0", "cat.jpg")
    expect(items).to_have_count(20)
    expect(items.first).to_have_attribute("data-job-id", job_id)
    expect(items.last).to_have_attribute("data-job-id", f"{2:032x}")  # the oldest one went
    kept = json.loads(page.evaluate("localStorage.getItem('imgq.recentJobs')"))
    assert len(kept) == 20
    assert kept[0]["job_id"] == job_id

    page.click("#recent-clear")
    expect(items).to_have_count(0)
    expect(page.locator("#recent-empty")).to_be_visible()
    open_page(page)
    expect(items).to_have_count(0)
