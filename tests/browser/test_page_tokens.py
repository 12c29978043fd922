"""API tokens in the page: a 401 asks for a token, which is kept and sent on every API call."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Request, expect

from tests.chromium import (
    RESULT_TIMEOUT_MS,
    artifacts_dir,
    new_page,
    require_chromium,
)

require_chromium()

TOKEN = "page-test-token"
API_PATHS = re.compile(r"/(info|status|classifications)(/|$|\?)")


@pytest.fixture(scope="module")
def token_gateway(service: Any) -> str:
    """Another gateway on the same broker and replicas, requiring an API token."""
    url: str = service.extra_gateway(IMGQ_API_TOKENS=f"someone-else,{TOKEN}")
    return url


@pytest.fixture
def page(browser: Browser, token_gateway: str) -> Iterator[Page]:
    with new_page(browser, token_gateway) as page:
        yield page


@pytest.mark.timeout(120)
def test_page_asks_for_a_token_keeps_it_and_sends_it(page: Page) -> None:
    api_calls: list[Request] = []
    page.on("request", lambda r: api_calls.append(r) if API_PATHS.search(r.url) else None)

    with page.expect_response(lambda r: r.url.endswith("/info")) as first:
        page.goto("/")
    assert first.value.status == 401
    token_form = page.locator("#token-form")
    expect(token_form).to_be_visible()
    expect(page.locator("#token-note")).to_contain_text("needs an API token")
    expect(page.locator("#error-message")).to_contain_text("token")
    expect(page.locator("#token-input")).to_be_focused()

    # A wrong token is refused, and said so.
    page.fill("#token-input", "wrong")
    with page.expect_response(lambda r: r.url.endswith("/info")) as refused:
        page.click("#token-form button[type=submit]")
    assert refused.value.status == 401
    expect(page.locator("#token-note")).to_contain_text("refused")

    page.fill("#token-input", TOKEN)
    with page.expect_response(lambda r: r.url.endswith("/info")) as accepted:
        page.click("#token-form button[type=submit]")
    assert accepted.value.status == 200
    expect(token_form).to_be_hidden()
    expect(page.locator("#token-saved")).to_be_visible()
    expect(page.locator("#error-message")).to_be_hidden()

    # The token is kept: a reload goes straight through, and a job is submitted and followed.
    api_calls.clear()
    page.reload()
    expect(page.locator('#model-select option[value="efficientnet_lite0"]')).to_have_text(
        re.compile(r"\b(online|offline)\b")
    )
    page.click('[data-image="cat.jpg"]')
    page.click("#submit-button")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=RESULT_TIMEOUT_MS)
    expect(page.locator("#result-chart .bar-row")).to_have_count(5)
    page.screenshot(path=str(artifacts_dir() / "page-token.png"), full_page=True)

    # The status page uses the same token.
    page.goto("/static/status.html")
    expect(page.locator("#replica-rows tr[data-replica]")).to_have_count(2)
    expect(page.locator("#token-form")).to_be_hidden()

    assert {r.method for r in api_calls} >= {"GET", "POST"}
    missing = [r.url for r in api_calls if r.header_value("authorization") != f"Bearer {TOKEN}"]
    assert missing == [], missing

    # "Forget it" removes the token: the next call is refused and the field comes back.
    page.click("#token-forget")
    expect(page.locator("#token-form")).to_be_visible(timeout=5_000)
    assert page.evaluate("localStorage.getItem('imgq.apiToken')") is None
