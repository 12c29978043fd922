"""gateway/headers.py: every response says what the page may load, who may frame it and what
may leak; and the page works under that policy in a real browser."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway.headers import CONTENT_SECURITY_POLICY
from tests import api
from tests.conftest import Service

REPO = Path(__file__).resolve().parent.parent
PLAIN = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def _directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for directive in policy.split(";"):
        name, *sources = directive.split()
        parsed[name] = sources
    return parsed


def assert_security_headers(headers: dict[str, str]) -> None:
    for name, value in PLAIN.items():
        assert headers.get(name) == value, (name, headers)
    assert headers.get("content-security-policy") == CONTENT_SECURITY_POLICY


def test_the_policy_allows_this_origin_only_and_no_inline_code() -> None:
    policy = _directives(CONTENT_SECURITY_POLICY)
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["base-uri"] == ["'none'"]
    for sources in policy.values():
        assert not {"'unsafe-inline'", "'unsafe-eval'", "*", "http:", "https:"} & set(sources)


def test_the_page_has_no_inline_script_or_style() -> None:
    """What the policy forbids must not be in the page: no <script> body, no <style>, no
    style="" or on*="" attribute, nothing from another origin."""
    for html in (REPO / "gateway" / "static").glob("*.html"):
        text = html.read_text(encoding="utf-8")
        assert not re.search(r"<script\b[^>]*>\s*[^<\s]", text), html.name
        assert "<style" not in text, html.name
        assert not re.search(r"\sstyle\s*=", text), html.name
        assert not re.search(r"\son[a-z]+\s*=", text), html.name
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), html.name


@pytest.mark.broker
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("GET", "/static/app.js", 200),
        ("GET", "/static/status.html", 200),
        ("GET", "/images/cat.jpg", 200),
        ("GET", "/info", 200),
        ("GET", "/openapi.json", 200),
        ("GET", "/metrics", 200),
        ("GET", "/healthz", 200),
        ("GET", "/nowhere", 404),
        ("GET", "/static/nothing.js", 404),
        ("DELETE", "/info", 405),
    ],
)
def test_every_response_carries_the_security_headers(
    service: Service, method: str, path: str, status: int
) -> None:
    reply = api.request(service.base_url, method, path)
    assert reply.status == status, (path, reply.status, reply.body[:200])
    assert_security_headers(reply.headers)


@pytest.mark.broker
def test_an_event_stream_carries_them_too(service: Service) -> None:
    """The stream's headers go out inside its handler, before any middleware could add them."""
    job = api.submit(service.base_url, "efficientnet_lite0", "cat.jpg", reuse=True)
    url = f"{service.base_url}/classifications/{job['job_id']}/events"
    with urllib.request.urlopen(url, timeout=60) as response:
        headers = {k.lower(): v for k, v in response.headers.items()}
        response.read()
    assert headers["content-type"].startswith("text/event-stream")
    assert_security_headers(headers)


@pytest.mark.broker
def test_a_missing_page_asset_is_a_problem(service: Service) -> None:
    reply = api.get(service.base_url, "/static/nothing.js")
    assert reply.content_type == "application/problem+json"
    assert reply.json()["code"] == "not_found"


@pytest.mark.broker
@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/info", "GET, HEAD"),
        ("PUT", "/classifications", "POST"),
        ("POST", "/classifications/3f2b8c1e9a7d4c6b8e0f1a2b3c4d5e6f", "DELETE, GET, HEAD"),
        ("TRACE", "/", "GET, HEAD"),
    ],
)
def test_a_405_says_which_methods_the_path_takes(
    service: Service, method: str, path: str, allow: str
) -> None:
    reply = api.request(service.base_url, method, path)
    assert reply.status == 405
    assert reply.headers["allow"] == allow
    assert reply.json()["code"] == "method_not_allowed"


# -- in the browser -------------------------------------------------------------------------

# Recorded from the first script on: Playwright's init scripts are not subject to the policy.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


@pytest.mark.browser
@pytest.mark.broker
@pytest.mark.timeout(120)
def test_the_page_works_under_its_policy(page: Any) -> None:
    from playwright.sync_api import expect

    from tests.browser import open_page

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
