"""A model of our own, dropped into the repository, classifies through HTTP and AMQP."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import expect

from classifier_service import precision
from classifier_service.installed import installed
from shared.producer import Producer
from tests import api, multipart, tiny_models
from tests.cluster import Cluster

ENGLISH = ["red", "green", "blue"]
FRENCH = ["rouge", "vert", "bleu"]


def _top(job: dict[str, object]) -> str:
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert isinstance(result, list)
    label = result[0]["label"]
    assert isinstance(label, str)
    return label


def _online(url: str, model_id: str) -> bool:
    """Whether /info shows ``model_id`` (``name`` or ``name@version``) online."""
    for model in api.get(url, "/info").json()["models"]:
        if model["name"] == model_id and model["online"]:
            return True
        if any(v["id"] == model_id and v["online"] for v in model["versions"]):
            return True
    return False


async def _over_amqp(url: str, model: str, data: bytes) -> tuple[str, str]:
    async with Producer(url) as producer:
        job_id = await producer.submit(model, "red.png", data)
        async with asyncio.timeout(120):
            reply = await producer.reply(job_id)
    assert reply.event.result, reply.event.error
    assert reply.event.model_version is not None
    return reply.event.result[0].label, reply.event.model_version


def _serving(url: str, model: str) -> int:
    """How many replicas serve ``model`` (a bare name: its default version on each)."""
    for entry in api.get(url, "/info").json()["models"]:
        if entry["name"] == model:
            return int(entry["replicas"])
    return 0


def test_a_model_of_our_own_classifies_through_http_and_amqp(
    cluster: Cluster, tmp_path: Path, figure: Callable[[str], None]
) -> None:
    network = tiny_models.trained_network()
    repository = tmp_path / "repository"
    # Version 9 as TorchScript (the replica exports it to ONNX), 10 as ONNX with French labels:
    # 10 is the default (natural order), so the bare name reaches it.
    tiny_models.write_torchscript(repository / "tiny" / "9", network, ENGLISH)
    ten = tiny_models.write_onnx(repository / "tiny" / "10", network, FRENCH)
    # v10 asks for bf16: it gets it where this CPU has bfloat16 instructions, else fp32.
    metadata = json.loads((ten / "model.json").read_text())
    (ten / "model.json").write_text(json.dumps({**metadata, "precision": "bf16"}))
    reduced = "bf16" if precision.native_bf16() and installed("openvino") else "fp32"
    # Beside them: a folder that is not JSON, and a version whose labels the network disagrees with.
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "1" / "model.json").write_text("{not json")
    tiny_models.write_onnx(repository / "tiny" / "11", network, ["red", "green"])

    replica = cluster.start_replica(
        IMGQ_MODEL_DIR=str(repository),
        IMGQ_MODEL_CACHE=str(tmp_path / "cache"),
        IMGQ_SERVE="tiny",
        # tiny@9 is TorchScript: code, served only where the operator allows it.
        IMGQ_ALLOW_TORCHSCRIPT="true",
    )
    _, url = cluster.start_gateway()
    # Not cluster.wait_replicas: this replica does not serve the gateway's catalogue model.
    deadline = time.monotonic() + 120
    while not _online(url, "tiny@9") and time.monotonic() < deadline:
        assert replica.alive(), replica.log_tail()
        time.sleep(0.2)
    assert _online(url, "tiny@10"), replica.log_tail()
    (tiny,) = [m for m in api.get(url, "/info").json()["models"] if m["name"] == "tiny"]
    assert (tiny["version"], tiny["precision"]) == ("10", reduced)
    assert sorted((v["id"], v["online"], v["precision"]) for v in tiny["versions"]) == [
        ("tiny@10", True, reduced),
        ("tiny@9", True, "fp32"),
    ]

    red = tiny_models.picture("red", fmt="PNG")

    def classify(model: str) -> tuple[str, str]:
        upload = multipart.upload(url, model, "red.png", red)
        job = api.wait_final(url, multipart.accepted(upload)["job_id"])
        return _top(job), job["model_version"]

    # Each answer names the version that ran, the bare name included.
    by_http = {model: classify(model) for model in ("tiny@9", "tiny@10", "tiny")}
    assert by_http == {"tiny@9": ("red", "9"), "tiny@10": ("rouge", "10"), "tiny": ("rouge", "10")}

    broker = cluster.node.url
    assert asyncio.run(_over_amqp(broker, "tiny@9", red)) == ("red", "9")
    assert asyncio.run(_over_amqp(broker, "tiny", red)) == ("rouge", "10")

    # A rollout: a replica of the previous release, whose repository has only version 9, so
    # its default for "tiny" is 9.  Jobs for the bare name go to either replica, and each says
    # which version it got.
    previous = tmp_path / "previous"
    shutil.copytree(repository / "tiny" / "9", previous / "tiny" / "9")
    cluster.start_replica(
        IMGQ_MODEL_DIR=str(previous),
        IMGQ_MODEL_CACHE=str(tmp_path / "cache"),
        IMGQ_SERVE="tiny",
        IMGQ_ALLOW_TORCHSCRIPT="true",
    )
    deadline = time.monotonic() + 120
    while _serving(url, "tiny") < 2:
        assert time.monotonic() < deadline, "the second replica never served tiny"
        time.sleep(0.2)
    ran: set[tuple[str, str]] = set()
    for _ in range(40):
        ran.add(classify("tiny"))
        if len(ran) == 2:
            break
    assert ran == {("red", "9"), ("rouge", "10")}, ran

    log = replica.log_tail(200_000)
    assert f"model folder {repository / 'broken' / '1'} skipped: model.json is not readable" in log
    assert f"model folder {repository / 'tiny' / '11'} skipped: the network outputs" in log
    assert replica.alive()
    figure(
        "own model (3 classes, trained in the test): tiny@9 (TorchScript) answered "
        f"{by_http['tiny@9'][0]!r} over HTTP and AMQP, tiny (default: v10, ONNX) "
        f"{by_http['tiny'][0]!r}; during a rollout each answer named the version that ran"
    )

    # The page's picker offers the model by name (its default version), then each version.
    # The browser is launched only now, not as a fixture: Playwright's sync API holds an event
    # loop on this thread while it is open, and the AMQP checks above run one of their own.
    from tests.chromium import launch_browser, new_page, open_page, require_chromium

    require_chromium()
    with launch_browser() as browser, new_page(browser, url) as page:
        open_page(page)
        group = page.locator('#model-select optgroup[label="Tiny colours"]')
        options = group.locator("option")
        expect(options).to_have_count(3)
        values = options.evaluate_all("els => els.map(e => e.value)")
        assert values[0] == "tiny"
        assert sorted(values[1:]) == ["tiny@10", "tiny@9"]
        expect(options.first).to_contain_text("v10")
        expect(options.first).to_contain_text("(default)")
        expect(options.first).to_contain_text(f"· {reduced}")
        expect(group.locator('option[value="tiny@9"]')).to_contain_text("v9 · online")
