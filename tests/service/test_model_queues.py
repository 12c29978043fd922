"""One work queue per model: a replica takes only jobs for the models it serves, and a job for a
model that no replica serves right now waits in its queue (the 202 says so) until one comes."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from shared.topology import REQUESTS_QUEUE, model_queue
from tests import api
from tests.cluster import Cluster

pytestmark = pytest.mark.timeout(300)

Figure = Callable[[str], None]
LITE0, LITE1 = "efficientnet_lite0", "efficientnet_lite1"


def _info_models(url: str) -> dict[str, dict[str, object]]:
    return {model["name"]: model for model in api.get(url, "/info").json()["models"]}


def _wait_online(url: str, model: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not _info_models(url).get(model, {}).get("online"):
        assert time.monotonic() < deadline, f"no replica announced {model} in {timeout:.0f} s"
        time.sleep(0.3)


def _status_queues(url: str) -> dict[str, int]:
    queues = api.get(url, "/status").json()["queues"]
    assert isinstance(queues, dict)
    return queues


def test_each_model_waits_in_its_own_queue_for_a_replica_that_serves_it(
    cluster: Cluster, figure: Figure
) -> None:
    _, url = cluster.start_gateway(IMGQ_MODELS=f"{LITE0},{LITE1}")
    first = cluster.start_replica(IMGQ_MODELS=LITE0)
    _wait_online(url, LITE0)

    waiting = api.submit(url, LITE1, "cat.jpg")
    assert waiting["status"] == "queued"
    assert "no replica serves efficientnet_lite1" in waiting["note"]
    served = api.submit(url, LITE0, "coffee.jpg")
    assert "note" not in served
    done = api.wait_final(url, served["job_id"])
    assert (done["status"], done["replica"]) == ("succeeded", first.name)

    models = _info_models(url)
    assert (models[LITE0]["online"], models[LITE1]["online"]) == (True, False)
    # The lite0 replica never took the lite1 job (it would have failed it): it waits, alone,
    # in its model's queue.  Not a wait for something not to happen: the lite0 replica has
    # already taken and finished a job queued after it, and the broker counts the lite1 job
    # among its queue's ready messages, which no consumer holds.
    assert api.get(url, f"/classifications/{waiting['job_id']}").json()["status"] == "queued"
    queues = _status_queues(url)
    assert queues[model_queue(LITE1)] == 1
    assert queues[model_queue(LITE0)] == 0
    assert queues[REQUESTS_QUEUE] == 0

    started = time.monotonic()
    second = cluster.start_replica(IMGQ_MODELS=LITE1)
    finished = api.wait_final(url, waiting["job_id"])
    assert (finished["status"], finished["replica"]) == ("succeeded", second.name)
    assert finished["result"][0]["label"] in {"tabby", "tiger cat", "Egyptian cat"}
    _wait_online(url, LITE1)
    figure(
        f"model queues: a {LITE1} job waited with no replica serving it, then finished "
        f"{time.monotonic() - started:.1f} s after a {LITE1} replica was started"
    )


def test_a_model_announced_once_stays_on_offer_while_its_replicas_are_gone(
    cluster: Cluster,
) -> None:
    """A gateway that has seen a model announced keeps accepting its jobs after the last
    replica serving it stops: they wait in its queue rather than failing as unknown."""
    _, url = cluster.start_gateway(IMGQ_MODELS=LITE0)
    replica = cluster.start_replica(IMGQ_MODELS=f"{LITE0},{LITE1}")
    cluster.wait_replicas(1)
    assert _info_models(url)[LITE1]["online"] is True
    assert replica.terminate() == 0
    deadline = time.monotonic() + 30
    while _info_models(url)[LITE1]["online"]:
        assert time.monotonic() < deadline, "the stopped replica still counts as online"
        time.sleep(0.5)

    job = api.submit(url, LITE1, "cat.jpg")
    assert job["status"] == "queued"
    assert "waits in its queue" in job["note"]
    assert _status_queues(url)[model_queue(LITE1)] == 1
