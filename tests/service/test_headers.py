"""gateway/headers.py: every response says what the page may load, who may frame it and what
may leak (the policy itself: tests/unit/test_headers.py; the page working under it in a real
browser: tests/browser/test_headers.py)."""

from __future__ import annotations

import urllib.request

import pytest

from gateway.headers import CONTENT_SECURITY_POLICY
from tests import api
from tests.conftest import Service

PLAIN = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def assert_security_headers(headers: dict[str, str]) -> None:
    for name, value in PLAIN.items():
        assert headers.get(name) == value, (name, headers)
    assert headers.get("content-security-policy") == CONTENT_SECURITY_POLICY


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


def test_an_event_stream_carries_them_too(service: Service) -> None:
    """The stream's headers go out inside its handler, before any middleware could add them."""
    job = api.submit(service.base_url, "efficientnet_lite0", "cat.jpg", reuse=True)
    url = f"{service.base_url}/classifications/{job['job_id']}/events"
    with urllib.request.urlopen(url, timeout=60) as response:
        headers = {k.lower(): v for k, v in response.headers.items()}
        response.read()
    assert headers["content-type"].startswith("text/event-stream")
    assert_security_headers(headers)


def test_a_missing_page_asset_is_a_problem(service: Service) -> None:
    reply = api.get(service.base_url, "/static/nothing.js")
    assert reply.content_type == "application/problem+json"
    assert reply.json()["code"] == "not_found"


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
