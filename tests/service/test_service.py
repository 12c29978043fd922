"""End to end: the gateway and two classifier replicas as real processes on a real broker."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import api
from tests.cluster import Cluster
from tests.conftest import Service
from tests.openapi_contract import assert_response_matches

CATS = {"Egyptian cat", "tiger cat", "tabby"}
# What each clear gallery photo must come out as (top-1), whichever model classifies it.
EXPECTED_TOP1 = {"cat.jpg": CATS, "coffee.jpg": {"espresso"}, "camera.jpg": {"tripod"}}
MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def test_info_lists_models_and_gallery(service: Service) -> None:
    reply = api.get(service.base_url, "/info")
    assert reply.status == 200
    info = reply.json()
    assert_response_matches("/info", "get", 200, reply.content_type, info)
    assert [m["name"] for m in info["models"]] == list(MODELS)
    assert all(m["online"] and m["replicas"] == 2 for m in info["models"])
    names = {image["name"] for image in info["images"]}
    assert {"cat.jpg", "coffee.jpg", "camera.jpg"} <= names
    image = api.get(service.base_url, "/images/cat.jpg")
    assert image.status == 200
    assert image.content_type == "image/jpeg"
    assert image.body == (api.REPO / "images" / "cat.jpg").read_bytes()


@pytest.mark.parametrize("model", MODELS)
def test_each_model_classifies_the_clear_photos(service: Service, model: str) -> None:
    jobs = {name: api.submit(service.base_url, model, name) for name in EXPECTED_TOP1}
    for name, job in jobs.items():
        done = api.wait_final(service.base_url, job["job_id"])
        assert done["status"] == "succeeded", done
        assert done["result"][0]["label"] in EXPECTED_TOP1[name], (name, done["result"])


def test_fifty_jobs_two_replicas_in_order(service: Service) -> None:
    images = ["cat.jpg", "coffee.jpg"] * 25
    # Submitted one after another, so acceptance order is list order.
    accepted = []
    for name in images:
        reply = api.post_json(
            service.base_url,
            "/classifications",
            {"model": "efficientnet_lite0", "image": name},
            {"Cache-Control": "no-cache"},
        )
        assert reply.status == 202, reply.body
        job = reply.json()
        assert_response_matches("/classifications", "post", 202, reply.content_type, job)
        assert reply.headers["location"] == f"/classifications/{job['job_id']}"
        assert job["status"] == "queued"
        accepted.append(job["job_id"])

    with ThreadPoolExecutor(16) as pool:
        done = list(pool.map(lambda job_id: api.wait_final(service.base_url, job_id), accepted))

    for name, job in zip(images, done, strict=True):
        assert job["status"] == "succeeded", job
        assert job["result"][0]["label"] in EXPECTED_TOP1[name]
        assert len(job["result"]) == 5
        scores = [label["score"] for label in job["result"]]
        assert scores == sorted(scores, reverse=True)
        assert job["queued_at"] <= job["started_at"] <= job["finished_at"]
    replicas = {job["replica"] for job in done}
    assert replicas == {"replica-1", "replica-2"}, "both replicas should have done work"

    # FIFO: each replica starts its jobs in acceptance order.  (A replica holds two batches,
    # the next one waiting while this one runs, so a job waiting in one replica's hand may be
    # overtaken by what the other runs meanwhile: no bound on that holds whatever the timing.)
    for replica in replicas:
        starts = [job["started_at"] for job in done if job["replica"] == replica]
        assert starts == sorted(starts), f"{replica} started jobs out of order"


def test_long_poll_returns_promptly_on_completion(service: Service) -> None:
    lags = []
    for _ in range(5):
        job = api.submit(service.base_url, "efficientnet_lite2", "cat.jpg")
        asked = time.time()
        reply = api.get(service.base_url, f"/classifications/{job['job_id']}?wait=30")
        answered = time.time()
        body = reply.json()
        assert reply.status == 200
        assert_response_matches("/classifications/{job_id}", "get", 200, reply.content_type, body)
        assert body["status"] == "succeeded"
        assert answered - asked < 30
        lags.append(answered - body["finished_at"])
    # The poll is answered by the event that finishes the job, not by a timer.
    assert max(lags) < 0.25, lags


def test_long_poll_times_out_with_current_state(cluster: Cluster) -> None:
    # A gateway and no replica: the job stays queued, so the poll must time out.
    _, url = cluster.start_gateway()
    job = api.submit(url, "efficientnet_lite0", "coffee.jpg")
    started = time.monotonic()
    reply = api.get(url, f"/classifications/{job['job_id']}?wait=0.5")
    elapsed = time.monotonic() - started
    assert reply.status == 200
    assert reply.json()["status"] == "queued"
    assert reply.json()["position"] == 1
    assert 0.45 <= elapsed < 2.0


def test_long_poll_since_answers_on_each_change(service: Service) -> None:
    # Jobs ahead of ours keep it queued while the poll below starts waiting.
    ahead = [api.submit(service.base_url, "efficientnet_lite2", "cat.jpg") for _ in range(12)]
    job = api.submit(service.base_url, "efficientnet_lite2", "cat.jpg")
    path = f"/classifications/{job['job_id']}?wait=30"
    # The "started" event always precedes the result on the replica's channel, so a poll
    # that waits for the status to leave "queued" is answered with "started".
    moved = api.get(service.base_url, path + "&since=queued").json()
    assert moved["status"] == "started"
    assert moved["started_at"] is not None
    assert moved["replica"] in ("replica-1", "replica-2")
    final = api.get(service.base_url, path + "&since=started").json()
    assert final["status"] == "succeeded"
    for other in ahead:
        assert api.wait_final(service.base_url, other["job_id"])["status"] == "succeeded"
    bad = api.get(service.base_url, path + "&since=done")
    assert bad.status == 400
    assert "since must be one of" in bad.json()["detail"]


def test_form_post_without_javascript(service: Service) -> None:
    reply = api.request(
        service.base_url,
        "POST",
        "/classifications",
        b"model=efficientnet_lite0&image=coffee.jpg",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status == 202
    job = api.wait_final(service.base_url, reply.json()["job_id"])
    assert job["result"][0]["label"] == "espresso"


def test_health_and_readiness(service: Service) -> None:
    assert api.get(service.base_url, "/healthz").json() == {"status": "ok"}
    ready = api.get(service.base_url, "/readyz")
    assert ready.status == 200
    assert ready.json() == {"status": "ready"}


def test_openapi_document_is_served(service: Service) -> None:
    reply = api.get(service.base_url, "/openapi.json")
    assert reply.status == 200
    assert reply.content_type == "application/json"
    assert reply.json()["openapi"].startswith("3.1")
    assert reply.body == (api.REPO / "gateway" / "openapi.json").read_bytes()
