"""The web page, driven in Debian's chromium against the real gateway and classifier replicas."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect

from tests.chromium import (
    JOB_ID,
    PHONE,
    RESULT_TIMEOUT_MS,
    artifacts_dir,
    is_post_to_classifications,
    new_page,
    open_page,
    require_chromium,
)

require_chromium()


@pytest.mark.timeout(120)
def test_classify_coffee_shows_top5_chart(page: Page) -> None:
    polls: list[str] = []

    def record_poll(request: Request) -> None:
        if request.method == "GET" and "/classifications/" in request.url:
            polls.append(request.url)

    page.on("request", record_poll)
    info = open_page(page)

    # The controls come from /info, not only from the page's static fallback.
    options = page.locator("#model-select option")
    expect(options).to_have_count(len(info["models"]))
    for model in info["models"]:
        option = page.locator(f'#model-select option[value="{model["name"]}"]')
        expect(option).to_contain_text(model["title"])
        expect(option).to_contain_text("online" if model["online"] else "offline")
    thumbs = page.locator("#gallery [data-image]")
    assert thumbs.evaluate_all("els => els.map(e => e.dataset.image)") == [
        image["name"] for image in info["images"]
    ]

    page.select_option("#model-select", "efficientnet_lite0")
    page.click('[data-image="coffee.jpg"]')
    # Really classify it: an earlier test may have left a result the gateway would reuse.
    page.check("#no-cache")
    expect(page.locator('input[name="image"][value="coffee.jpg"]')).to_be_checked()
    preview = page.locator("#preview-image")
    expect(preview).to_have_attribute("src", re.compile(r"/images/coffee\.jpg$"))
    page.wait_for_function("() => document.querySelector('#preview-image').naturalWidth > 0")

    with page.expect_response(is_post_to_classifications) as posted:
        page.click("#submit-button")
    assert posted.value.status == 202
    job_id = posted.value.json()["job_id"]
    assert JOB_ID.match(job_id)
    expect(page.locator("#job-id")).to_have_text(job_id)

    status = page.locator("#job-status")
    expect(status).to_have_text("succeeded", timeout=RESULT_TIMEOUT_MS)
    rows = page.locator("#result-chart .bar-row")
    expect(rows).to_have_count(5)
    page.screenshot(path=str(artifacts_dir() / "page-result.png"), full_page=True)
    # The README's picture (docs/screenshot.png is a copy of it): the top of the page only.
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(artifacts_dir() / "page-readme.png"), animations="disabled")

    expect(rows.first).to_have_attribute("data-label", "espresso")
    expect(rows.first).to_contain_text("espresso")
    expect(page.locator("#error-message")).to_be_hidden()
    expect(page.locator("#elapsed")).to_have_text(re.compile(r"^\d+\.\d+ s"))

    bars = rows.evaluate_all(
        """rows => rows.map(row => ({
            score: Number(row.dataset.score),
            text: row.querySelector('.bar-value').textContent,
            fill: row.querySelector('.bar-fill').getBoundingClientRect().width,
            track: row.querySelector('.bar-track').getBoundingClientRect().width,
        }))"""
    )
    scores = [bar["score"] for bar in bars]
    assert scores == sorted(scores, reverse=True)
    assert 0 < scores[0] <= 1
    for bar in bars:
        assert re.fullmatch(r"<?\d+(\.\d+)?%", bar["text"]), bar
        # Bars are as long as their score (a 2 px minimum keeps tiny scores visible).
        assert bar["fill"] == pytest.approx(max(bar["score"] * bar["track"], 2), abs=2), bar

    # Long-polling, not a fast poll loop: every poll asks the gateway to hold it.
    assert polls, "the page never asked for the job's state"
    # `since` lets the gateway answer at once when the job moves on (queued -> started).
    assert all(
        re.search(rf"/classifications/{job_id}\?wait=25&since=(queued|started)$", url)
        for url in polls
    ), polls
    assert len(polls) <= 4, polls


@pytest.mark.timeout(120)
def test_rejected_submission_shows_problem_detail(page: Page) -> None:
    detail = "The work queue is full (simulated by the test); try again in a few seconds."

    def reject(route: Route) -> None:
        if route.request.method != "POST":
            route.fallback()
            return
        problem = {
            "type": "urn:imgq:problem:queue_full",
            "title": "Queue full",
            "status": 503,
            "detail": detail,
            "code": "queue_full",
        }
        route.fulfill(
            status=503,
            headers={"Retry-After": "3"},
            content_type="application/problem+json",
            body=json.dumps(problem),
        )

    page.route("**/classifications", reject)
    open_page(page)
    page.click('[data-image="cat.jpg"]')
    page.click("#submit-button")

    error = page.locator("#error-message")
    expect(error).to_be_visible()
    expect(error).to_contain_text(detail)
    expect(page.locator("#job-id")).to_be_empty()
    expect(page.locator("#result-chart .bar-row")).to_have_count(0)


@pytest.mark.timeout(120)
def test_unknown_model_shows_gateway_problem_detail(page: Page) -> None:
    open_page(page)
    # A stale page could offer a model the gateway no longer serves; the real 422 must read well.
    page.evaluate(
        """() => {
            const select = document.querySelector('#model-select');
            select.add(new Option('Retired model', 'retired_model'));
            select.value = 'retired_model';
        }"""
    )
    with page.expect_response(is_post_to_classifications) as posted:
        page.click("#submit-button")
    assert posted.value.status == 422
    content_type = posted.value.header_value("content-type") or ""
    assert content_type.startswith("application/problem+json"), content_type
    problem = posted.value.json()

    error = page.locator("#error-message")
    expect(error).to_be_visible()
    expect(error).to_contain_text(problem["detail"])
    expect(error).to_contain_text("efficientnet_lite0")  # the detail names what is allowed
    expect(page.locator("#job-id")).to_be_empty()


@pytest.mark.timeout(120)
def test_failed_job_shows_its_error_message(page: Page) -> None:
    message = "cannot decode image: simulated by the test"

    def fail(route: Route) -> None:
        job_id = route.request.url.split("/classifications/")[1].split("?")[0]
        job = {
            "job_id": job_id,
            "status": "failed",
            "model": "efficientnet_lite0",
            "image": "camera.jpg",
            "result": None,
            "error": {"code": "image_decode_failed", "message": message},
            "queued_at": 1.0,
            "started_at": 2.0,
            "finished_at": 3.0,
            "replica": "test",
        }
        route.fulfill(status=200, content_type="application/json", body=json.dumps(job))

    # The submission is real; only the job's outcome is replaced.
    page.route("**/classifications/*", fail)
    open_page(page)
    page.click('[data-image="camera.jpg"]')
    page.click("#submit-button")

    expect(page.locator("#job-status")).to_have_text("failed")
    expect(page.locator("#job-id")).to_have_text(JOB_ID)
    error = page.locator("#error-message")
    expect(error).to_be_visible()
    expect(error).to_contain_text(message)
    expect(page.locator("#result-chart .bar-row")).to_have_count(0)


@pytest.mark.timeout(120)
def test_phone_layout_fits_the_screen(browser: Browser, service: Any) -> None:
    with new_page(browser, service.base_url, PHONE) as page:
        open_page(page)
        page.click('[data-image="cat.jpg"]')
        page.click("#submit-button")
        expect(page.locator("#job-status")).to_have_text("succeeded", timeout=RESULT_TIMEOUT_MS)
        expect(page.locator("#result-chart .bar-row")).to_have_count(5)
        # Nothing is wider than the phone: no sideways scrolling.
        width = page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= PHONE["width"], width
        # Controls are comfortable to tap (44 px, as the platform guidelines ask).
        for selector in ("#model-select", "#submit-button", "#compare-button"):
            box = page.locator(selector).bounding_box()
            assert box is not None, selector
            assert box["height"] >= 44, (selector, box)
            assert box["x"] >= 0, (selector, box)
            assert box["x"] + box["width"] <= PHONE["width"], (selector, box)
        # The result was brought into view below the form.
        expect(page.locator("#result-chart")).to_be_in_viewport()
        page.screenshot(path=str(artifacts_dir() / "page-phone.png"))
        page.screenshot(path=str(artifacts_dir() / "page-phone-full.png"), full_page=True)
