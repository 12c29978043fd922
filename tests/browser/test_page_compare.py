"""Comparing every model on one image: one job per model, results side by side with times."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, Request, expect

from tests.chromium import (
    RESULT_TIMEOUT_MS,
    artifacts_dir,
    open_page,
    require_chromium,
)

require_chromium()

SECONDS = r"\d+\.\d+ s"


def record_posts(page: Page) -> list[Request]:
    posts: list[Request] = []

    def record(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/classifications"):
            posts.append(request)

    page.on("request", record)
    return posts


@pytest.mark.timeout(120)
def test_compare_every_model_on_the_cat(page: Page) -> None:
    info = open_page(page)
    names = [model["name"] for model in info["models"]]
    assert len(names) == 3, names
    posts = record_posts(page)

    page.click('[data-image="cat.jpg"]')
    page.check("#no-cache")  # real inference on every model, so each has its own time
    expect(page.locator("#compare-button")).to_have_text("Compare all 3 models")
    page.click("#compare-button")

    columns = page.locator("#compare-results .compare-column")
    expect(columns).to_have_count(3)
    assert columns.evaluate_all("cs => cs.map(c => c.dataset.model)") == names
    for model in info["models"]:
        column = page.locator(f'.compare-column[data-model="{model["name"]}"]')
        expect(column.locator("h3")).to_have_text(model["title"])
        expect(column).to_have_attribute("data-status", "succeeded", timeout=RESULT_TIMEOUT_MS)
        expect(column.locator(".bar-row")).to_have_count(5)
        expect(column.locator('[data-time="inference"]')).to_have_text(
            re.compile(rf"^inference {SECONDS}$")
        )
        expect(column.locator('[data-time="total"]')).to_have_text(
            re.compile(rf"^total {SECONDS}$")
        )
        expect(column.locator(".compare-error")).to_be_hidden()
    expect(page.locator("#compare-summary")).to_have_text("All 3 models answered.")
    expect(page.locator("#compare-subject")).to_have_text("cat.jpg")

    # Every model really saw the cat.
    tops = columns.evaluate_all("cs => cs.map(c => c.querySelector('.bar-row').dataset.label)")
    assert all(re.search(r"cat|tabby|lynx", top, re.IGNORECASE) for top in tops), tops

    # One POST per offered model, each asking for a fresh classification.
    assert sorted(p.post_data_json["model"] for p in posts) == sorted(names)
    assert all(p.post_data_json["image"] == "cat.jpg" for p in posts)
    assert all(p.header_value("cache-control") == "no-cache" for p in posts)
    page.screenshot(path=str(artifacts_dir() / "page-compare.png"), full_page=True)

    # The same comparison again, without "classify again": the gateway reuses the results.
    posts.clear()
    page.uncheck("#no-cache")
    with page.expect_response(lambda r: r.request.method == "POST") as first_answer:
        page.click("#compare-button")
    assert first_answer.value.status == 202
    for name in names:
        column = page.locator(f'.compare-column[data-model="{name}"]')
        expect(column).to_have_attribute("data-status", "succeeded")
        expect(column.locator('[data-time="inference"]')).to_have_text("reused")
        expect(column.locator(".bar-row")).to_have_count(5)
    assert len(posts) == 3
    assert all(p.header_value("cache-control") is None for p in posts)
    # The comparison's jobs are in the recent-jobs list too: 3 + 3.
    expect(page.locator("#recent-jobs .recent-item")).to_have_count(6)
