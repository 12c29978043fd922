"""Bad input gets a clear 4xx problem, never a crash, and never costs another job."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aio_pika
import orjson
import pytest

from shared import wire
from shared.messages import ClassifyRequest, new_job_id
from shared.topology import DEAD_LETTER_QUEUE, REQUEST_ROUTING_KEY, REQUESTS_EXCHANGE
from tests import api
from tests.conftest import Service
from tests.openapi_contract import assert_response_matches

GOOD = {"model": "efficientnet_lite0", "image": "coffee.jpg"}


def _problem(reply: api.Reply, status: int, code: str) -> dict[str, object]:
    assert reply.status == status, (reply.status, reply.body)
    assert reply.content_type == "application/problem+json"
    body: dict[str, object] = reply.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"urn:imgq:problem:{code}"
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


def _still_works(base_url: str) -> None:
    job = api.submit(base_url, GOOD["model"], GOOD["image"])
    assert api.wait_final(base_url, job["job_id"])["result"][0]["label"] == "espresso"


def test_unknown_model_and_image_name_what_is_allowed(service: Service) -> None:
    reply = api.post_json(service.base_url, "/classifications", {**GOOD, "model": "resnet9000"})
    body = _problem(reply, 422, "unknown_model")
    assert_response_matches("/classifications", "post", 422, reply.content_type, body)
    # Every model ID on offer: each catalogue model by name, and by name@version as the
    # replicas announce it (the built-ins are version 1).
    catalogue = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert sorted(body["allowed"]) == sorted([*catalogue, *(f"{m}@1" for m in catalogue)])
    assert "resnet9000" in str(body["detail"])
    assert "efficientnet_lite0" in str(body["detail"])

    reply = api.post_json(service.base_url, "/classifications", {**GOOD, "image": "dog.jpg"})
    body = _problem(reply, 422, "unknown_image")
    assert "cat.jpg" in body["allowed"]  # type: ignore[operator]
    _still_works(service.base_url)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"model": "efficientnet_lite0"}', "'image'"),
        (b'{"model": 7, "image": "cat.jpg"}', "'model'"),
        (b"", "not valid JSON"),
    ],
)
def test_malformed_bodies_are_400(service: Service, raw: bytes, fragment: str) -> None:
    reply = api.request(
        service.base_url, "POST", "/classifications", raw, {"Content-Type": "application/json"}
    )
    body = _problem(reply, 400, "malformed_request")
    assert_response_matches("/classifications", "post", 400, reply.content_type, body)
    assert fragment in str(body["detail"])


def test_unknown_jobs_are_404(service: Service) -> None:
    for job_id in (new_job_id(), "not-a-job", "A" * 32):
        reply = api.get(service.base_url, f"/classifications/{job_id}")
        body = _problem(reply, 404, "job_not_found")
        assert_response_matches("/classifications/{job_id}", "get", 404, reply.content_type, body)


@pytest.mark.parametrize("wait", ["-1", "31", "soon", "nan", "inf"])
def test_bad_wait_is_400(service: Service, wait: str) -> None:
    job = api.submit(service.base_url, GOOD["model"], GOOD["image"])
    reply = api.get(service.base_url, f"/classifications/{job['job_id']}?wait={wait}")
    body = _problem(reply, 400, "malformed_request")
    assert "wait must be a number of seconds from 0 to 30" in str(body["detail"])


@pytest.mark.parametrize(
    "path",
    [
        "/images/..%2Fpyproject.toml",
        "/images/%2e%2e%2fpyproject.toml",
        "/images/..%2F..%2F..%2Fetc%2Fpasswd",
        "/images/%2Fetc%2Fpasswd",
        "/images/ATTRIBUTION.md",
        "/static/..%2F..%2Fpyproject.toml",
        "/static/%2e%2e/%2e%2e/pyproject.toml",
    ],
)
def test_paths_cannot_leave_the_gallery(service: Service, path: str) -> None:
    reply = api.get(service.base_url, path)
    assert reply.status == 404, (path, reply.status)
    assert reply.content_type == "application/problem+json"
    assert b"[project]" not in reply.body
    assert b"root:" not in reply.body


def test_unknown_path_and_wrong_method_are_problems(service: Service) -> None:
    _problem(api.get(service.base_url, "/nowhere"), 404, "not_found")
    _problem(api.request(service.base_url, "DELETE", "/info"), 405, "method_not_allowed")


async def _publish_raw(broker_url: str, messages: list[bytes | aio_pika.Message]) -> None:
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(REQUESTS_EXCHANGE)
        for message in messages:
            if isinstance(message, bytes):
                message = aio_pika.Message(message, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await exchange.publish(message, REQUEST_ROUTING_KEY)


async def _dead_letters(broker_url: str) -> int:
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(DEAD_LETTER_QUEUE, passive=True)
        count = queue.declaration_result.message_count
        assert count is not None
        return count


def test_poison_messages_are_dead_lettered_and_do_not_block(service: Service) -> None:
    before = asyncio.run(_dead_letters(service.broker_url))
    unknown_model = ClassifyRequest(
        job_id=new_job_id(),
        model="alexnet",
        image_name="cat.jpg",
        image=(api.REPO / "images" / "cat.jpg").read_bytes(),
        queued_at=time.time(),
    )
    no_model = wire.request_message(unknown_model).message
    no_model.message_id = new_job_id()
    no_model.headers = {k: v for k, v in (no_model.headers or {}).items() if k != "model"}
    bad: list[bytes | aio_pika.Message] = [
        b"\x00\x01 not json at all",
        b'{"v": 1, "job_id": "x"}',
        orjson.dumps({"v": 99, "job_id": new_job_id()}),
        no_model,  # version 2 without its model header
        wire.request_message(unknown_model).message,
    ]
    asyncio.run(_publish_raw(service.broker_url, bad))
    # Good jobs published after the poison still flow.
    _still_works(service.base_url)
    deadline = time.monotonic() + 15
    while asyncio.run(_dead_letters(service.broker_url)) < before + len(bad):
        assert time.monotonic() < deadline, "poison messages were not dead-lettered"
        time.sleep(0.2)
    # A request that could be read but names no known model also fails visibly by its ID.
    job = api.wait_final(service.base_url, unknown_model.job_id, timeout=15)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "unknown_model"
    assert "alexnet" in job["error"]["message"]
    # A version 2 request that cannot be read is still reported by its message_id.
    unreadable = api.wait_final(service.base_url, str(no_model.message_id), timeout=15)
    assert unreadable["status"] == "failed"
    assert unreadable["error"]["code"] == "dead_lettered"


def test_image_that_fails_to_decode_fails_alone(service: Service, tmp_path: Path) -> None:
    cat = (api.REPO / "images" / "cat.jpg").read_bytes()
    # The header is intact (so the gallery offers it) but the pixel data is cut short.
    (tmp_path / "broken.jpg").write_bytes(cat[: len(cat) // 3])
    (tmp_path / "cat.jpg").write_bytes(cat)
    (tmp_path / "notes.txt").write_text("not an image: the gallery must skip it")
    base_url = service.extra_gateway(IMGQ_GALLERY_DIR=str(tmp_path))
    names = {image["name"] for image in api.get(base_url, "/info").json()["images"]}
    assert names == {"broken.jpg", "cat.jpg"}

    broken = api.submit(base_url, "efficientnet_lite0", "broken.jpg")
    fine = api.submit(base_url, "efficientnet_lite0", "cat.jpg")
    failed = api.wait_final(base_url, broken["job_id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "image_decode_failed"
    assert "cannot decode image" in failed["error"]["message"]
    assert failed["result"] is None
    assert api.wait_final(base_url, fine["job_id"])["status"] == "succeeded"


def test_the_broker_refuses_a_message_over_16_mib(service: Service) -> None:
    async def publish_huge() -> None:
        connection = await aio_pika.connect(service.broker_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(REQUESTS_EXCHANGE)
            await exchange.publish(aio_pika.Message(b"\0" * (17 << 20)), REQUEST_ROUTING_KEY)

    with pytest.raises(
        aio_pika.exceptions.AMQPError, match="larger than configured max size 16777216"
    ):
        asyncio.run(publish_huge())
