"""The ``imgq`` library against the real service: the sync and the asyncio client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import imgq
from imgq.wire import EventParser, batch_submission
from tests.conftest import REPO, Service
from tests.test_batches import small_jpegs

MODEL = "efficientnet_lite0"
COFFEE = REPO / "images" / "coffee.jpg"


@pytest.mark.broker
def test_sync_client_submits_waits_streams_and_cancels(service: Service) -> None:
    client = imgq.Client(service.base_url)
    assert MODEL in [m.name for m in client.models()]

    job = client.submit(MODEL, COFFEE, fresh=True)  # a path: uploaded
    assert job.image == "upload:coffee.jpg"
    events = list(client.events(job.job_id))
    assert events[-1].is_final
    assert [e.status for e in events][-1] == "succeeded"
    done = client.wait(job.job_id)
    assert done.label is not None
    assert done.label.label == "espresso"

    batch = client.submit_batch(MODEL, ["cat.jpg", COFFEE, small_jpegs(1, seed=11)[0]])
    assert [j.image for j in batch.jobs] == ["cat.jpg", "upload:coffee.jpg", "upload:image"]
    finished = client.wait_batch(batch.batch_id)
    assert finished.done
    assert finished.counts["succeeded"] == 3
    assert finished.jobs[1].result is not None
    assert finished.jobs[1].result[0].label == "espresso"

    assert client.cancel(done.job_id) is None  # a finished job is forgotten
    with pytest.raises(imgq.ApiError) as gone:
        client.get(done.job_id)
    assert (gone.value.status, gone.value.code) == (410, "job_gone")
    with pytest.raises(imgq.ApiError) as refused:
        client.submit_batch(MODEL, ["cat.jpg", "nosuch.jpg"])
    assert refused.value.code == "unknown_image"
    assert refused.value.detail.startswith("images[1] (nosuch.jpg)")


@pytest.mark.broker
def test_async_client_does_the_same(service: Service) -> None:
    async def scenario() -> None:
        async with imgq.AsyncClient(service.base_url) as client:
            assert MODEL in [m.name for m in await client.models()]
            job = await client.submit(MODEL, "coffee.jpg", fresh=True)
            statuses = [event.status async for event in client.events(job.job_id)]
            assert statuses[-1] == "succeeded"
            assert (await client.wait(job.job_id)).result is not None

            photos = small_jpegs(3, seed=12)
            batch = await client.submit_batch(MODEL, [("a.jpg", photos[0]), photos[1], "cat.jpg"])
            assert len(batch.jobs) == 3
            finished = await client.wait_batch(batch.batch_id)
            assert finished.counts["succeeded"] == 3
            assert [j.job_id for j in finished.jobs] == [j.job_id for j in batch.jobs]

            assert await client.cancel(job.job_id) is None
            with pytest.raises(imgq.ApiError) as gone:
                await client.get(job.job_id)
            assert gone.value.status == 410
            with pytest.raises(imgq.ApiError) as unknown:
                await client.get_batch("0" * 32)
            assert unknown.value.code == "batch_not_found"

    asyncio.run(scenario())


def test_unreachable_is_one_exception_for_both_clients() -> None:
    with pytest.raises(imgq.Unreachable, match="connection refused"):
        imgq.Client("http://127.0.0.1:1").get("ab" * 16)

    async def scenario() -> None:
        async with imgq.AsyncClient("http://127.0.0.1:1") as client:
            await client.get("ab" * 16)

    with pytest.raises(imgq.Unreachable):
        asyncio.run(scenario())
    with pytest.raises(ValueError, match="not an http"):
        imgq.AsyncClient("ftp://example.org")


def test_event_parser_skips_comments_and_other_events() -> None:
    parser = EventParser()
    lines = [": keep-alive", "", "event: other", "data: {}", "", "event: job", "id: queued"]
    assert [parser.feed(line) for line in lines] == [None] * len(lines)
    assert parser.feed('data: {"job_id": "x", "status": "queued"}') is None
    assert parser.feed("") == {"job_id": "x", "status": "queued"}


def test_a_batch_of_names_is_json_and_one_with_files_is_a_form(tmp_path: Path) -> None:
    content_type, body = batch_submission(MODEL, ["cat.jpg", "coffee.jpg"])
    assert (content_type, body) == (
        "application/json",
        b'{"model": "efficientnet_lite0", "images": ["cat.jpg", "coffee.jpg"]}',
    )
    photo = tmp_path / "p.png"
    photo.write_bytes(b"\x89PNG")
    content_type, body = batch_submission(MODEL, ["cat.jpg", photo])
    assert content_type.startswith("multipart/form-data; boundary=")
    # In order: the model, then the gallery name, then the file.
    assert (
        body.index(b'name="model"') < body.index(b'name="image"') < body.index(b'filename="p.png"')
    )
    assert b"Content-Type: image/png" in body
