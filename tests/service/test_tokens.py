"""IMGQ_API_TOKENS: the JSON API asks for a bearer token; the page and the probes stay open."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from shared.messages import new_job_id
from tests import api, multipart
from tests.conftest import Service
from tests.openapi_contract import assert_response_matches

GOOD = {"model": "efficientnet_lite0", "image": "coffee.jpg"}


@pytest.fixture(scope="module")
def guarded(service: Service) -> str:
    """A second gateway on the same broker and replicas, started with tokens (it stops with
    the session's stack)."""
    return service.extra_gateway(IMGQ_API_TOKENS=" t1, t2 ")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _unauthorized(reply: api.Reply, path: str, method: str) -> None:
    assert reply.status == 401, (method, path, reply.status, reply.body[:300])
    assert reply.headers["www-authenticate"] == "Bearer"
    body = reply.json()
    assert body["code"] == "unauthorized"
    assert_response_matches(path, method, 401, reply.content_type, body)


PROTECTED = [
    ("GET", "/info", "/info"),
    ("GET", "/status", "/status"),
    ("GET", "/metrics", "/metrics"),
    ("GET", "/classifications/{job_id}", f"/classifications/{new_job_id()}"),
    ("DELETE", "/classifications/{job_id}", f"/classifications/{new_job_id()}"),
    ("GET", "/classifications/{job_id}/events", f"/classifications/{new_job_id()}/events"),
]


@pytest.mark.parametrize(("method", "template", "path"), PROTECTED, ids=[p[2] for p in PROTECTED])
def test_the_api_needs_a_right_token(guarded: str, method: str, template: str, path: str) -> None:
    _unauthorized(api.request(guarded, method, path), template, method.lower())
    for wrong in (_bearer("t3"), _bearer("t1 t2"), {"Authorization": "Basic dDE6dDI="}):
        _unauthorized(api.request(guarded, method, path, headers=wrong), template, method.lower())
    # A right token gets past the gate (to a 404 for the made-up job IDs).
    reply = api.request(guarded, method, path, headers=_bearer("t2"))
    assert reply.status in (200, 404), (reply.status, reply.body[:300])


def test_a_whole_job_with_a_token(guarded: str) -> None:
    body = json.dumps(GOOD).encode()
    headers = {"Content-Type": "application/json", "Cache-Control": "no-cache"}
    _unauthorized(
        api.request(guarded, "POST", "/classifications", body, headers), "/classifications", "post"
    )
    reply = api.request(guarded, "POST", "/classifications", body, {**headers, **_bearer("t1")})
    assert reply.status == 202, reply.body
    job_id = reply.json()["job_id"]
    done = api.request(guarded, "GET", f"/classifications/{job_id}?wait=30", headers=_bearer("t1"))
    assert done.status == 200
    assert done.json()["status"] == "succeeded"
    # Each token is its own client: another token does not see the job (as if it did not exist).
    other = api.request(guarded, "GET", f"/classifications/{job_id}", headers=_bearer("t2"))
    assert other.status == 404
    # The scheme name is case-insensitive (RFC 7235).
    upload = multipart.upload(
        guarded,
        "efficientnet_lite0",
        "c.jpg",
        (api.REPO / "images" / "coffee.jpg").read_bytes(),
        reuse=True,
        headers={"Authorization": "bearer t1"},
    )
    assert upload.status == 202, upload.body
    assert api.request(guarded, "GET", "/info", headers=_bearer("t1")).json()["models"]


@pytest.mark.parametrize(
    "path", ["/", "/static/app.js", "/images/cat.jpg", "/healthz", "/readyz", "/openapi.json"]
)
def test_the_page_and_probes_stay_open(guarded: str, path: str) -> None:
    assert api.get(guarded, path).status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/static/..%2Finfo",
        "/static/../info",
        "/images/..%2Finfo",
        "/images/%2E%2E/status",
        "//info",
    ],
)
def test_no_spelling_of_a_path_gets_around_the_token(guarded: str, path: str) -> None:
    request = urllib.request.Request(guarded + path)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    assert status in (401, 404), (path, status)
    assert b'"models"' not in body
    assert b'"replicas"' not in body


def test_a_gateway_without_tokens_stays_open(service: Service) -> None:
    assert api.get(service.base_url, "/info").status == 200
    assert api.get(service.base_url, "/status").status == 200
