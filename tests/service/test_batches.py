"""POST /batches and GET /batches/{id} against the real service: many images, one request."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from imgq.http_wire import Upload, encode_multipart
from tests import api
from tests.conftest import Service
from tests.noise_images import small_jpegs
from tests.openapi_contract import assert_response_matches

MODEL = "efficientnet_lite0"


def post_files(
    base_url: str,
    files: list[tuple[str, bytes]],
    model: str = MODEL,
    names: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
) -> api.Reply:
    """A multipart batch: the files as 'file' parts, then gallery names as 'image' fields."""
    parts: list[Upload | tuple[str, str]] = [Upload("file", name, data) for name, data in files]
    parts += [("image", name) for name in names]
    content_type, body = encode_multipart({"model": model}, parts)
    return api.request(
        base_url, "POST", "/batches", body, {"Content-Type": content_type, **(headers or {})}
    )


def matches(reply: api.Reply, path: str, method: str) -> None:
    assert_response_matches(path, method, reply.status, reply.content_type, reply.json())


def wait_batch(base_url: str, batch_id: str, timeout: float = 120.0) -> dict[str, Any]:
    for _ in range(int(timeout / 30) + 1):
        reply = api.get(base_url, f"/batches/{batch_id}?wait=30")
        assert reply.status == 200, reply.body
        matches(reply, "/batches/{batch_id}", "get")
        batch: dict[str, Any] = reply.json()
        if batch["done"]:
            return batch
    raise AssertionError(f"batch {batch_id} not done after {timeout} s")


def test_a_batch_of_50_uploads_in_one_request_gets_50_results(
    service: Service, figure: Callable[[str], None]
) -> None:
    images = small_jpegs(50, seed=1)
    started = time.monotonic()
    reply = post_files(service.base_url, [(f"photo-{i}.jpg", d) for i, d in enumerate(images)])
    accepted_after = time.monotonic() - started
    assert reply.status == 202, reply.body
    matches(reply, "/batches", "post")
    accepted = reply.json()
    assert reply.headers["location"] == f"/batches/{accepted['batch_id']}"
    assert [job["image"] for job in accepted["jobs"]] == [
        f"upload:photo-{i}.jpg" for i in range(50)
    ]
    assert len({job["job_id"] for job in accepted["jobs"]}) == 50

    batch = wait_batch(service.base_url, accepted["batch_id"])
    assert batch["counts"]["succeeded"] == 50, batch["counts"]
    assert [job["job_id"] for job in batch["jobs"]] == [job["job_id"] for job in accepted["jobs"]]
    assert all(len(job["result"]) == 5 for job in batch["jobs"])
    # Each job is also an ordinary job, by its own ID.
    one = api.get(service.base_url, f"/classifications/{batch['jobs'][7]['job_id']}").json()
    assert one["status"] == "succeeded"
    figure(
        f"a batch of 50 uploads ({sum(map(len, images)) / 1024:.0f} KiB) in one POST /batches: "
        f"202 with 50 jobs after {accepted_after * 1000:.0f} ms, all 50 succeeded after "
        f"{time.monotonic() - started:.1f} s"
    )


def test_a_json_batch_of_gallery_names_and_a_mixed_form(service: Service) -> None:
    reply = api.post_json(
        service.base_url,
        "/batches",
        {"model": MODEL, "images": ["coffee.jpg", "cat.jpg", "coffee.jpg"]},
        {"Cache-Control": "no-cache"},
    )
    assert reply.status == 202, reply.body
    batch = wait_batch(service.base_url, reply.json()["batch_id"])
    assert [job["image"] for job in batch["jobs"]] == ["coffee.jpg", "cat.jpg", "coffee.jpg"]
    assert batch["jobs"][0]["result"][0]["label"] == "espresso"

    [photo] = small_jpegs(1, seed=2)
    reply = post_files(service.base_url, [("mine.jpg", photo)], names=("rocket.jpg",))
    assert reply.status == 202, reply.body
    assert [job["image"] for job in reply.json()["jobs"]] == ["upload:mine.jpg", "rocket.jpg"]


def _problem(reply: api.Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body)
    assert reply.content_type == "application/problem+json"
    problem: dict[str, Any] = reply.json()
    assert problem["code"] == code
    return problem


def test_limits_and_bad_images_refuse_the_whole_batch(service: Service) -> None:
    url = service.base_url
    empty = api.post_json(url, "/batches", {"model": MODEL, "images": []})
    _problem(empty, 422, "empty_batch")
    _problem(post_files(url, []), 422, "empty_batch")
    too_many = api.post_json(url, "/batches", {"model": MODEL, "images": ["cat.jpg"] * 65})
    assert "at most 64" in _problem(too_many, 413, "payload_too_large")["detail"]
    files = [(f"{i}.jpg", b"\xff\xd8\xff") for i in range(65)]
    _problem(post_files(url, files), 413, "payload_too_large")
    unknown = api.post_json(url, "/batches", {"model": "nope", "images": ["cat.jpg"]})
    _problem(unknown, 422, "unknown_model")
    wrong_name = api.post_json(url, "/batches", {"model": MODEL, "images": ["cat.jpg", "x.jpg"]})
    assert _problem(wrong_name, 422, "unknown_image")["detail"].startswith("images[1] (x.jpg): ")
    good = small_jpegs(2, seed=3)
    broken = post_files(url, [("a.jpg", good[0]), ("b.txt", b"not an image"), ("c.jpg", good[1])])
    detail = _problem(broken, 415, "unsupported_media_type")["detail"]
    assert detail.startswith("images[1] (file 'b.txt'): ")
    _problem(api.post_json(url, "/batches", {"model": MODEL}), 400, "malformed_request")
    plain = api.request(url, "POST", "/batches", b"x", {"Content-Type": "text/plain"})
    _problem(plain, 415, "unsupported_content_type")


def test_an_unknown_batch_is_a_404_problem(service: Service) -> None:
    _problem(api.get(service.base_url, "/batches/" + "0" * 32), 404, "batch_not_found")
    _problem(api.get(service.base_url, "/batches/not-an-id"), 404, "batch_not_found")
    reply = api.post_json(service.base_url, "/batches", {"model": MODEL, "images": ["cat.jpg"]})
    _problem(
        api.get(service.base_url, reply.headers["location"] + "?wait=99"), 400, "malformed_request"
    )


def test_a_batch_belongs_to_its_token(service: Service) -> None:
    url = service.extra_gateway(IMGQ_API_TOKENS="alice-token,bob-token")
    alice = {"Authorization": "Bearer alice-token"}
    bob = {"Authorization": "Bearer bob-token"}
    reply = api.post_json(url, "/batches", {"model": MODEL, "images": ["cat.jpg"]}, alice)
    assert reply.status == 202, reply.body
    path = reply.headers["location"]
    assert api.request(url, "GET", path, headers=alice).status == 200
    _problem(api.request(url, "GET", path, headers=bob), 404, "batch_not_found")
    _problem(api.get(url, path), 401, "unauthorized")


def test_any_gateway_answers_for_a_batch_from_the_event_log(service: Service) -> None:
    """Behind a load balancer the GET may reach another gateway than the POST: each job
    carries its place in the batch, so that gateway rebuilds the batch from the log."""
    images = small_jpegs(6, seed=7)
    reply = post_files(service.base_url, [(f"p{i}.jpg", d) for i, d in enumerate(images)])
    assert reply.status == 202, reply.body
    accepted = reply.json()
    other = service.extra_gateway()
    batch = wait_batch(other, accepted["batch_id"])
    matches(api.get(other, f"/batches/{accepted['batch_id']}"), "/batches/{batch_id}", "get")
    assert [job["job_id"] for job in batch["jobs"]] == [job["job_id"] for job in accepted["jobs"]]
    assert batch["counts"]["succeeded"] == 6
    assert batch["model"] == MODEL
    # The accepting gateway and the other one say the same.
    assert wait_batch(service.base_url, accepted["batch_id"])["jobs"] == batch["jobs"]


def test_any_gateway_answers_for_a_batch_of_replayed_keys_and_reused_results(
    service: Service,
) -> None:
    """A retried batch's members are the first batch's jobs (their events name that batch),
    and an image answered from an earlier result is a job of its own: another gateway still
    lists every member of each batch."""
    url = service.base_url
    body = {"model": MODEL, "images": ["rocket.jpg", "camera.jpg"]}
    key = {"Idempotency-Key": f"retry-{time.monotonic_ns()}", "Cache-Control": "no-cache"}
    first = api.post_json(url, "/batches", body, key).json()
    retried = api.post_json(url, "/batches", body, key)
    assert retried.status == 202, retried.body
    retry = retried.json()
    assert [job["job_id"] for job in retry["jobs"]] == [job["job_id"] for job in first["jobs"]]
    assert wait_batch(url, first["batch_id"])["counts"]["succeeded"] == 2
    # The same image again, answered from that result: a job that names this batch, even
    # where the client's last single submission was already such an answer.
    assert api.submit(url, MODEL, "rocket.jpg", reuse=True)["reused_from"] is not None
    reused = api.post_json(url, "/batches", {"model": MODEL, "images": ["rocket.jpg"]}).json()
    assert reused["jobs"][0]["reused_from"] is not None

    other = service.extra_gateway()
    for accepted in (retry, reused):
        batch = wait_batch(other, accepted["batch_id"])
        assert [job["job_id"] for job in batch["jobs"]] == [
            job["job_id"] for job in accepted["jobs"]
        ]
        assert wait_batch(url, accepted["batch_id"])["jobs"] == batch["jobs"]
