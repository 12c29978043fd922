"""POST /classifications reads JSON, urlencoded and multipart bodies, and nothing else: any other
Content-Type is a 415, and a small body is capped at the same size whether it declares its
length or arrives chunked.  Against the session's gateway."""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.limits import MAX_SMALL_BODY_BYTES
from tests import api, multipart
from tests.conftest import Service
from tests.openapi_contract import assert_response_matches

GOOD = {"model": "efficientnet_lite0", "image": "cat.jpg"}
ALLOWED = ["application/json", "application/x-www-form-urlencoded", "multipart/form-data"]


def _post(
    base_url: str, body: bytes | Iterable[bytes], headers: dict[str, str]
) -> tuple[int, dict[str, str], Any]:
    """http.client rather than urllib: it sends no Content-Type of its own, and sends an
    iterable body chunked (no Content-Length)."""
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
    try:
        connection.request("POST", "/classifications", body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
        headers_in = {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()
    parsed = json.loads(answer) if answer else None
    return response.status, headers_in, parsed


def _assert_problem(
    status: int, headers: dict[str, str], body: Any, expected: int, code: str
) -> None:
    assert status == expected, (status, body)
    assert headers["content-type"].startswith("application/problem+json")
    assert body["code"] == code
    assert_response_matches("/classifications", "post", status, headers["content-type"], body)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/xml",
        "application/octet-stream",
        "application/merge-patch+json",
        None,
    ],
)
def test_other_content_types_are_415_and_not_read_as_json(
    service: Service, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    status, answer_headers, body = _post(service.base_url, json.dumps(GOOD).encode(), headers)
    _assert_problem(status, answer_headers, body, 415, "unsupported_content_type")
    assert body["allowed"] == ALLOWED
    for media_type in ALLOWED:
        assert media_type in body["detail"]


def test_json_with_a_charset_is_still_json(service: Service) -> None:
    headers = {"Content-Type": "application/json; charset=utf-8"}
    status, _, body = _post(service.base_url, json.dumps(GOOD).encode(), headers)
    assert status == 202, body


def _chunks(data: bytes, size: int = 8192) -> Iterable[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def _padded_json(total: int) -> bytes:
    """A valid submission of about ``total`` bytes: the gateway would accept it but for its size."""
    body = json.dumps({**GOOD, "pad": ""}).encode()
    return json.dumps({**GOOD, "pad": "x" * (total - len(body))}).encode()


def test_a_chunked_json_body_is_capped_like_a_declared_one(service: Service) -> None:
    over = _padded_json(MAX_SMALL_BODY_BYTES + 1)
    assert len(over) == MAX_SMALL_BODY_BYTES + 1
    json_type = {"Content-Type": "application/json"}
    declared = _post(service.base_url, over, json_type)
    _assert_problem(*declared, 413, "payload_too_large")
    chunked = _post(service.base_url, _chunks(over), json_type)
    _assert_problem(*chunked, 413, "payload_too_large")
    assert str(MAX_SMALL_BODY_BYTES) in chunked[2]["detail"]
    # Far over (but under the upload limit, which used to be the only cap on it).
    far = _post(service.base_url, _chunks(_padded_json(4 * 1024 * 1024)), json_type)
    _assert_problem(*far, 413, "payload_too_large")
    # At the limit, chunked or not, it is read and accepted.
    at = _padded_json(MAX_SMALL_BODY_BYTES)
    assert _post(service.base_url, at, json_type)[0] == 202
    assert _post(service.base_url, _chunks(at), json_type)[0] == 202


def test_a_chunked_urlencoded_body_is_capped_too(service: Service) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    good = b"model=efficientnet_lite0&image=cat.jpg"
    assert _post(service.base_url, _chunks(good, 7), form)[0] == 202
    over = good + b"&pad=" + b"x" * MAX_SMALL_BODY_BYTES
    _assert_problem(*_post(service.base_url, _chunks(over), form), 413, "payload_too_large")


def test_an_urlencoded_body_that_is_not_utf8_is_400(service: Service) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = b"model=efficientnet_lite0&image=caf\xe9.jpg"
    _assert_problem(*_post(service.base_url, body, form), 400, "malformed_request")


def test_a_form_has_only_its_own_parts(service: Service) -> None:
    reply = multipart.post_form(service.base_url, {**GOOD, "upload": "x"})
    assert reply.status == 400, reply.body
    body = reply.json()
    assert body["code"] == "malformed_request"
    assert "'upload'" in body["detail"]
    assert multipart.post_form(service.base_url, GOOD).status == 202


def test_an_idempotency_key_is_visible_ascii(service: Service) -> None:
    unique = uuid.uuid4().hex
    for key in (f"bodies-{unique}", f"bodies {unique}"):
        reply = api.post_json(service.base_url, "/classifications", GOOD, {"Idempotency-Key": key})
        assert reply.status == 202, (key, reply.body)
    status, headers, body = _post(
        service.base_url,
        json.dumps(GOOD).encode(),
        {"Content-Type": "application/json", "Idempotency-Key": "caf\xe9"},
    )
    _assert_problem(status, headers, body, 400, "malformed_request")
    assert "visible ASCII" in body["detail"]
