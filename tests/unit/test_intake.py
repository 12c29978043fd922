"""gateway/intake.py in-process: the real app and handlers, a stand-in for the broker.

What a client is charged before its body is read, what its bodies may hold, how long they may
take, and that a single job and a batch come in by the same path.  No broker: publishing is
recorded, and a job ends when the test applies its final event to the store.  The guarantees
that need the real service (memory under a flood of uploads) are in tests/service/test_bodies.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from gateway import keys
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.submissions import Jobs
from imgq.http_wire import Upload, encode_multipart
from shared.messages import BatchRecord, ClassifyRequest, JobEvent
from shared.states import JobStatus
from tests.openapi_contract import assert_response_matches

MODEL = "efficientnet_lite0"
ALICE = {"Authorization": "Bearer alice"}
BOB = {"Authorization": "Bearer bob"}


class Broker:
    """Takes every job at once, as a broker that confirms; keeps what was published."""

    ready = True
    user = "imgq-gateway"

    def __init__(self) -> None:
        self.published: list[ClassifyRequest] = []
        self.batch_records: list[BatchRecord] = []
        self.events: list[JobEvent] = []

    async def submit(self, request: ClassifyRequest, queued: JobEvent, content_type: str) -> None:
        self.published.append(request)

    async def publish_event(self, event: JobEvent) -> None:
        self.events.append(event)

    async def publish_forgotten(self, job_id: str) -> None:
        pass

    async def publish_batch(self, record: BatchRecord) -> None:
        self.batch_records.append(record)


Scenario = Callable[[Any, web.Application, Broker], Awaitable[None]]


def run(scenario: Scenario, **env: str) -> None:
    """``scenario`` against a gateway with tokens alice and bob and the given settings."""
    settings = GatewaySettings.from_env({"IMGQ_API_TOKENS": "alice,bob", **env})

    async def main() -> None:
        app = create_app(settings)
        app.cleanup_ctx.clear()  # no broker to start
        broker = Broker()
        app[keys.JOBS] = Jobs(app[keys.STORE], broker, app[keys.METRICS])
        async with TestClient(TestServer(app)) as client:
            await scenario(client, app, broker)

    asyncio.run(main())


def finish(app: web.Application, job_id: str) -> None:
    """The job's final event, as the event log would bring it."""
    job = app[keys.STORE].get(job_id)
    app[keys.STORE].apply(job.advance(JobStatus.SUCCEEDED, finished_at=time.time()))


def _gallery_job(image: str = "cat.jpg") -> bytes:
    return json.dumps({"model": MODEL, "image": image}).encode()


def _jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (seed % 256, 7, 9)).save(out, "JPEG")
    return out.getvalue()


async def _stalled(first: bytes, release: asyncio.Event) -> AsyncIterator[bytes]:
    """A chunked body that sends ``first`` and then nothing until ``release`` is set."""
    yield first
    await release.wait()


def _problem(status: int, body: dict[str, Any], expected: int, code: str) -> None:
    assert status == expected, (status, body)
    assert body["code"] == code, body
    assert body["status"] == expected


# -- one path for a single job and a batch ------------------------------------------------------


def test_a_single_job_and_a_batch_come_in_the_same_way() -> None:
    async def scenario(client: Any, app: web.Application, broker: Broker) -> None:
        headers = {**ALICE, "Content-Type": "application/json", "Idempotency-Key": "k-1"}
        one = await client.post("/classifications", data=_gallery_job(), headers=headers)
        assert one.status == 202, await one.text()
        assert_response_matches(
            "/classifications", "post", 202, "application/json", await one.json()
        )
        content_type, body = encode_multipart(
            {"model": MODEL},
            [
                Upload("file", "a.jpg", _jpeg(1)),
                ("image", "cat.jpg"),
                Upload("file", "b.jpg", _jpeg(2)),
            ],
        )
        batch = await client.post(
            "/batches",
            data=body,
            headers={**ALICE, "Content-Type": content_type, "Idempotency-Key": "k-2"},
        )
        assert batch.status == 202, await batch.text()
        answer = await batch.json()
        assert_response_matches("/batches", "post", 202, "application/json", answer)
        assert [job["image"] for job in answer["jobs"]] == [
            "upload:a.jpg",
            "cat.jpg",
            "upload:b.jpg",
        ]
        single, *batched = broker.published
        assert (single.idempotency_key, single.batch) == ("k-1", None)
        assert [r.idempotency_key for r in batched] == ["k-2#0", "k-2#1", "k-2#2"]
        assert [str(r.batch) for r in batched] == [f"{answer['batch_id']}/{i}/3" for i in range(3)]

    run(scenario)


# -- the client's share, charged before the body is read ---------------------------------------


def test_a_client_over_its_share_is_refused_before_its_body_is_read() -> None:
    async def scenario(client: Any, app: web.Application, broker: Broker) -> None:
        json_type = {"Content-Type": "application/json"}
        first = await client.post(
            "/classifications", data=_gallery_job(), headers={**ALICE, **json_type}
        )
        assert first.status == 202
        # Alice's one job is in flight, her whole share here.  Her next body never arrives,
        # yet the answer does: nothing of it was waited for.
        release = asyncio.Event()
        refused = await client.post(
            "/classifications",
            data=_stalled(b'{"model": ', release),
            headers={**ALICE, **json_type},
        )
        release.set()
        body = await refused.json()
        _problem(refused.status, body, 429, "too_many_requests")
        retry = refused.headers["Retry-After"]
        assert re.search(rf"retry in {retry} s\b", body["detail"]), body["detail"]
        assert_response_matches("/classifications", "post", 429, refused.content_type, body)
        # Bob has his own share; and once Alice's job is final her seat is free again.
        other = await client.post(
            "/classifications", data=_gallery_job(), headers={**BOB, **json_type}
        )
        assert other.status == 202
        finish(app, (await first.json())["job_id"])
        again = await client.post(
            "/classifications", data=_gallery_job(), headers={**ALICE, **json_type}
        )
        assert again.status == 202, await again.text()

    run(scenario, IMGQ_CLIENT_JOBS="1")


def test_a_batch_needs_a_seat_for_every_image_or_none_is_queued() -> None:
    async def scenario(client: Any, app: web.Application, broker: Broker) -> None:
        json_type = {"Content-Type": "application/json"}
        first = await client.post(
            "/batches",
            data=json.dumps({"model": MODEL, "images": ["cat.jpg"] * 3}),
            headers={**ALICE, **json_type},
        )
        assert first.status == 202
        assert len(broker.published) == 3
        # Three in flight, four allowed: one more fits, two do not, and nothing is queued.
        two = await client.post(
            "/batches",
            data=json.dumps({"model": MODEL, "images": ["cat.jpg"] * 2}),
            headers={**ALICE, **json_type},
        )
        _problem(two.status, await two.json(), 429, "too_many_requests")
        assert len(broker.published) == 3
        one = await client.post(
            "/classifications", data=_gallery_job(), headers={**ALICE, **json_type}
        )
        assert one.status == 202

    run(scenario, IMGQ_CLIENT_JOBS="4")


# -- the bytes of its bodies ------------------------------------------------------------------


def test_one_clients_bodies_are_bounded_and_another_client_still_gets_in() -> None:
    mib = 1024 * 1024

    async def scenario(client: Any, app: web.Application, broker: Broker) -> None:
        release = asyncio.Event()
        content_type, body = encode_multipart(
            {"model": MODEL}, [Upload("file", "a.jpg", b"\xff" * (9 * mib))]
        )
        declared = {**ALICE, "Content-Type": content_type}
        # Chunked: what has arrived is held.  Two of these hold more than 16 MiB of Alice's.
        holding = [
            asyncio.ensure_future(
                client.post("/batches", data=_stalled(body[: 9 * mib], release), headers=declared)
            )
            for _ in range(2)
        ]
        bodies = app[keys.BODIES]
        await _until(lambda: bodies.held > 8 * mib)
        # A third, declaring its length, is refused at once: nothing of it is read.
        third = await client.post("/batches", data=body, headers=declared)
        answer = await third.json()
        _problem(third.status, answer, 429, "too_many_requests")
        assert "16,777,216" in answer["detail"], answer["detail"]
        assert_response_matches("/batches", "post", 429, third.content_type, answer)
        # Bob is not held up by Alice's bodies.
        other = await client.post(
            "/batches",
            data=json.dumps({"model": MODEL, "images": ["cat.jpg"]}),
            headers={**BOB, "Content-Type": "application/json"},
        )
        assert other.status == 202
        release.set()
        for reply in await asyncio.gather(*holding):
            assert reply.status in (400, 415, 429), reply.status
        await _until(lambda: bodies.held == 0)

    run(
        scenario,
        IMGQ_CLIENT_BODY_BYTES=str(16 * mib),
        IMGQ_BATCH_MAX_BYTES=str(16 * mib),
        IMGQ_BODY_BYTES=str(20 * mib),
    )


def test_the_gateway_bounds_the_bodies_of_all_clients_together() -> None:
    mib = 1024 * 1024

    async def scenario(client: Any, app: web.Application, broker: Broker) -> None:
        release = asyncio.Event()
        content_type, body = encode_multipart(
            {"model": MODEL}, [Upload("file", "a.jpg", b"\xff" * (9 * mib))]
        )
        alices = asyncio.ensure_future(
            client.post(
                "/classifications",
                data=_stalled(body[: 9 * mib], release),
                headers={**ALICE, "Content-Type": content_type},
            )
        )
        await _until(lambda: app[keys.BODIES].held > 8 * mib)
        bobs = await client.post(
            "/classifications", data=body, headers={**BOB, "Content-Type": content_type}
        )
        answer = await bobs.json()
        _problem(bobs.status, answer, 503, "uploads_busy")
        assert bobs.headers["Retry-After"]
        release.set()
        await alices

    run(
        scenario,
        IMGQ_CLIENT_BODY_BYTES=str(11 * mib),
        IMGQ_BATCH_MAX_BYTES=str(11 * mib),
        IMGQ_BODY_BYTES=str(15 * mib),
    )


def test_a_body_that_does_not_arrive_in_time_is_408_and_gives_its_bytes_back() -> None:
    async def scenario(client: Any, app: web.Application, broker: Broker) -> None:
        release = asyncio.Event()
        started = time.monotonic()
        reply = await client.post(
            "/classifications",
            data=_stalled(b'{"model": ', release),
            headers={**ALICE, "Content-Type": "application/json"},
        )
        waited = time.monotonic() - started
        release.set()
        body = await reply.json()
        _problem(reply.status, body, 408, "request_timeout")
        assert "within 0.5 s" in body["detail"]
        assert_response_matches("/classifications", "post", 408, reply.content_type, body)
        # The time limit is the behaviour: answered at it, not at some other timeout.
        assert 0.4 < waited < 10, waited
        assert app[keys.BODIES].held == 0

    run(scenario, IMGQ_BODY_TIMEOUT="0.5")


# -- GET /info ----------------------------------------------------------------------------------


def test_info_publishes_the_limits() -> None:
    async def scenario(client: Any, app: web.Application, broker: Broker) -> None:
        reply = await client.get("/info", headers=ALICE)
        body = await reply.json()
        assert_response_matches("/info", "get", 200, "application/json", body)
        assert body["max_wait"] == 12
        assert body["limits"] == {
            "max_wait": 12,
            "upload_max_bytes": 10 * 1024 * 1024,
            "upload_max_pixels": 40_000_000,
            "batch_max_images": 7,
            "batch_max_bytes": 8 * 1024 * 1024,
        }

    run(
        scenario,
        IMGQ_MAX_WAIT="12",
        IMGQ_BATCH_MAX_IMAGES="7",
        IMGQ_BATCH_MAX_BYTES=str(8 * 1024 * 1024),
    )


async def _until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not so after {seconds} s")
        await asyncio.sleep(0.01)


def test_settings_refuse_byte_budgets_too_small_for_the_limits() -> None:
    from shared.errors import SettingsError

    with pytest.raises(SettingsError, match="IMGQ_CLIENT_BODY_BYTES"):
        GatewaySettings.from_env({"IMGQ_CLIENT_BODY_BYTES": str(32 * 1024 * 1024)})
    with pytest.raises(SettingsError, match="IMGQ_BODY_BYTES"):
        GatewaySettings.from_env({"IMGQ_BODY_BYTES": str(100 * 1024 * 1024)})
