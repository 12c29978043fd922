"""gateway/headers.py: the page works under its content security policy in a real browser, with
no violation reported (the headers themselves: tests/unit/test_headers.py and
tests/service/test_headers.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import REPO

# Recorded from the first script on: Playwright's init scripts are not subject to the policy.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


@pytest.mark.timeout(120)
def test_the_page_works_under_its_policy(page: Any) -> None:
    from playwright.sync_api import expect

    from tests.chromium import open_page

    refused: list[str] = []
    page.on(
        "console",
        lambda message: (
            refused.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    page.add_init_script(RECORD_VIOLATIONS)
    info = open_page(page)  # module scripts ran and fetched /info
    assert info["models"]
    # The stylesheet applied (a browser's own body margin is 8px).
    assert page.evaluate("getComputedStyle(document.body).margin") == "0px"
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(244, 246, 249)"
    # A gallery image, then a picked file: its preview is a blob: URL.
    page.wait_for_function("() => document.querySelector('#preview-image').naturalWidth > 0")
    page.set_input_files("#file-input", str(REPO / "images" / "coffee.jpg"))
    expect(page.locator("#preview-image")).to_have_attribute("src", re.compile(r"^blob:"))
    page.wait_for_function("() => document.querySelector('#preview-image').naturalWidth > 0")
    violations = page.evaluate("window.__cspViolations")
    page.goto("/static/status.html")
    expect(page.locator("#live-state")).to_have_text("Live")
    violations += page.evaluate("window.__cspViolations")
    assert violations == []
    assert refused == []
