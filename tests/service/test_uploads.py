"""Uploads: POST /classifications with a file, its limits, and the checks that keep bad bytes out.

On the session's real broker, gateway and replicas (the checks of gateway/uploads.py on their
own, as pure unit tests: tests/unit/test_uploads.py)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image

from gateway.limits import MAX_PIXELS, MAX_UPLOAD_BYTES
from shared.images import MAX_DECODED_TEXT, MAX_JPEG_SCANS
from tests import api, multipart
from tests.conftest import Service
from tests.odd_images import scan_bomb
from tests.openapi_contract import assert_response_matches
from tests.upload_images import COFFEE, deep_png, encode, huge_png, phone_jpeg

MODEL = "efficientnet_lite0"


def _problem(reply: api.Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body[:500])
    assert reply.content_type == "application/problem+json"
    body: dict[str, Any] = reply.json()
    assert (body["status"], body["code"]) == (status, code), body
    assert_response_matches("/classifications", "post", status, reply.content_type, body)
    return body


def _still_works(base_url: str) -> None:
    """The gateway took no harm: a real upload is still classified."""
    job = multipart.accepted(multipart.upload(base_url, MODEL, "again.jpg", COFFEE))
    assert api.wait_final(base_url, job["job_id"])["result"][0]["label"] == "espresso"


@pytest.mark.parametrize(
    ("filename", "make", "claimed"),
    [
        ("coffee.jpg", lambda: COFFEE, "image/jpeg"),
        ("coffee.png", lambda: encode("PNG"), "image/png"),
        ("coffee.webp", lambda: encode("WEBP", quality=90), "image/webp"),
        ("IMG_0001.JPG", phone_jpeg, "image/jpeg"),
        # The client's claims do not matter, only the bytes.
        ("photo", lambda: encode("PNG"), "application/octet-stream"),
    ],
)
def test_uploads_are_classified(
    service: Service, filename: str, make: Callable[[], bytes], claimed: str
) -> None:
    reply = multipart.upload(service.base_url, MODEL, filename, make(), content_type=claimed)
    job = multipart.accepted(reply)
    assert_response_matches("/classifications", "post", 202, reply.content_type, job)
    assert reply.headers["location"] == f"/classifications/{job['job_id']}"
    assert job["status"] == "queued"
    assert job["image"] == f"upload:{filename}"
    done = api.wait_final(service.base_url, job["job_id"])
    assert_response_matches("/classifications/{job_id}", "get", 200, "application/json", done)
    assert done["status"] == "succeeded", done
    assert done["result"][0]["label"] == "espresso", done["result"]
    assert done["image"] == f"upload:{filename}"


def test_uploads_share_reuse_and_idempotency_with_gallery_jobs(service: Service) -> None:
    png = encode("PNG", Image.open(io.BytesIO(COFFEE)).convert("RGB").rotate(1))
    first = multipart.accepted(multipart.upload(service.base_url, MODEL, "a.png", png))
    first = api.wait_final(service.base_url, first["job_id"])
    assert first["status"] == "succeeded"

    # Same bytes under another name: the result is known already.
    again = multipart.accepted(multipart.upload(service.base_url, MODEL, "b.png", png, reuse=True))
    assert again["status"] == "succeeded"
    assert again["reused_from"] == first["job_id"]
    assert again["image"] == "upload:b.png"
    assert again["result"] == first["result"]

    key = f"upload-{first['job_id']}"
    one = multipart.upload(service.base_url, MODEL, "c.png", png, headers={"Idempotency-Key": key})
    two = multipart.upload(service.base_url, MODEL, "c.png", png, headers={"Idempotency-Key": key})
    assert multipart.accepted(two)["job_id"] == multipart.accepted(one)["job_id"]
    assert two.headers.get("idempotent-replayed") == "true"
    other = multipart.upload(
        service.base_url, MODEL, "c.jpg", COFFEE, headers={"Idempotency-Key": key}
    )
    _problem(other, 422, "idempotency_key_reused")


def test_gallery_jobs_still_go_through_multipart_forms(service: Service) -> None:
    reply = multipart.post_form(
        service.base_url,
        {"model": MODEL, "image": "coffee.jpg"},
        headers={"Cache-Control": "no-cache"},
    )
    job = multipart.accepted(reply)
    assert job["image"] == "coffee.jpg"
    assert api.wait_final(service.base_url, job["job_id"])["result"][0]["label"] == "espresso"
    # A browser sends an empty file part when no file was chosen: that is no upload.
    reply = multipart.post_form(
        service.base_url,
        {"model": MODEL, "image": "coffee.jpg"},
        {"file": ("", b"", "application/octet-stream")},
    )
    assert multipart.accepted(reply)["image"] == "coffee.jpg"


def test_browser_upload_is_redirected(service: Service) -> None:
    body, content_type = multipart.encode(
        {"model": MODEL}, {"file": ("c.jpg", COFFEE, "image/jpeg")}
    )
    reply = api.request(
        service.base_url,
        "POST",
        "/classifications",
        body,
        {"Content-Type": content_type, "Accept": "text/html", "Cache-Control": "no-cache"},
    )
    # urllib follows the 303 to the job itself.
    assert reply.status == 200
    assert reply.json()["image"] == "upload:c.jpg"


def test_filenames_are_sanitised(service: Service) -> None:
    name = "../../etc/evil\u202egpj.jpg"
    reply = multipart.upload(service.base_url, MODEL, name, COFFEE, reuse=True)
    assert multipart.accepted(reply)["image"] == "upload:evilgpj.jpg"
    long_name = "/etc/" + "x" * 300 + ".jpg"
    reply = multipart.upload(service.base_url, MODEL, long_name, COFFEE, reuse=True)
    image = multipart.accepted(reply)["image"]
    assert image.startswith("upload:xxx")
    assert image.endswith(".jpg")
    assert len(image) <= len("upload:") + 100
    # A raw control character breaks the part's header itself: a 400, not a crash.
    reply = multipart.upload(service.base_url, MODEL, "sp\x1bot.jpg", COFFEE, reuse=True)
    _problem(reply, 400, "malformed_request")


def test_too_many_bytes_is_413_with_the_limit(service: Service) -> None:
    # Just over the limit: the body fits the request cap, so the file part itself is refused.
    just_over = COFFEE + b"\0" * (MAX_UPLOAD_BYTES + 1 - len(COFFEE))
    body = _problem(
        multipart.upload(service.base_url, MODEL, "big.jpg", just_over), 413, "payload_too_large"
    )
    assert "10 MiB" in body["detail"]
    assert f"{MAX_UPLOAD_BYTES + 1} bytes" in body["detail"]
    # Far over: refused from Content-Length alone.
    far_over = COFFEE + b"\0" * (12 * 1024 * 1024)
    body = _problem(
        multipart.upload(service.base_url, MODEL, "bigger.jpg", far_over), 413, "payload_too_large"
    )
    assert "10 MiB" in body["detail"]
    # JSON submissions name things; they do not carry megabytes.
    reply = api.post_json(
        service.base_url, "/classifications", {"model": MODEL, "image": "x" * 100_000}
    )
    assert _problem(reply, 413, "payload_too_large")["detail"]
    _still_works(service.base_url)


@pytest.mark.parametrize(
    ("filename", "make"),
    [
        ("cat.gif", lambda: encode("GIF")),
        ("notes.jpg", lambda: b"just some text, renamed to look like a photo\n" * 20),
        ("empty.jpg", lambda: b""),
        ("coffee.bmp", lambda: encode("BMP")),
    ],
)
def test_other_formats_are_415(service: Service, filename: str, make: Callable[[], bytes]) -> None:
    reply = multipart.upload(service.base_url, MODEL, filename, make(), content_type="image/jpeg")
    body = _problem(reply, 415, "unsupported_media_type")
    for name in ("JPEG", "PNG", "WebP"):
        assert name in body["detail"]
    _still_works(service.base_url)


def test_decompression_bomb_is_413_image_too_large(service: Service) -> None:
    bomb = huge_png()
    assert len(bomb) < 100_000
    body = _problem(
        multipart.upload(service.base_url, MODEL, "bomb.png", bomb), 413, "image_too_large"
    )
    assert "9000x9000" in body["detail"]
    assert f"{MAX_PIXELS:,}" in body["detail"]
    _still_works(service.base_url)


def test_a_picture_too_large_to_decode_is_413_with_the_limit(service: Service) -> None:
    reply = multipart.upload(service.base_url, MODEL, "deep.png", deep_png())
    body = _problem(reply, 413, "image_too_large")
    assert "4500x4500, mode I;16" in body["detail"]
    assert f"the limit is {MAX_DECODED_TEXT}" in body["detail"]
    _still_works(service.base_url)


@pytest.mark.parametrize(
    ("filename", "make"),
    [
        ("cut.jpg", lambda: COFFEE[: len(COFFEE) // 2]),
        ("cut.png", lambda: encode("PNG")[:5000]),
        ("cut.webp", lambda: encode("WEBP")[:3000]),
        ("header-only.png", lambda: encode("PNG")[:12]),
    ],
)
def test_truncated_images_are_422(
    service: Service, filename: str, make: Callable[[], bytes]
) -> None:
    body = _problem(
        multipart.upload(service.base_url, MODEL, filename, make()), 422, "image_unreadable"
    )
    assert "allowed" not in body
    _still_works(service.base_url)


def test_a_jpeg_with_too_many_scans_is_422_before_it_is_decoded(service: Service) -> None:
    reply = multipart.upload(service.base_url, MODEL, "bomb.jpg", scan_bomb(500))
    body = _problem(reply, 422, "image_unreadable")
    assert "500 scans" in body["detail"]
    assert f"the limit is {MAX_JPEG_SCANS}" in body["detail"]
    _still_works(service.base_url)


@pytest.mark.parametrize(
    ("fields", "files", "fragment"),
    [
        ({}, {"file": ("c.jpg", COFFEE, "image/jpeg")}, "'model'"),
        ({"model": MODEL}, {}, "'image'"),
        (
            {"model": MODEL, "image": "cat.jpg"},
            {"file": ("c.jpg", COFFEE, "image/jpeg")},
            "not both",
        ),
    ],
)
def test_bad_forms_are_400(
    service: Service,
    fields: dict[str, str],
    files: dict[str, tuple[str, bytes, str]],
    fragment: str,
) -> None:
    reply = multipart.post_form(service.base_url, fields, files)
    assert fragment in _problem(reply, 400, "malformed_request")["detail"]


def test_unknown_model_with_an_upload_is_422(service: Service) -> None:
    reply = multipart.upload(service.base_url, "resnet9000", "c.jpg", COFFEE)
    body = _problem(reply, 422, "unknown_model")
    assert MODEL in body["allowed"]
