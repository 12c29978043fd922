"""The ``imgq`` command line against the running service, and a thousand images through
replica kills and a gateway restart (against a scripted fake server, its inputs, progress and
renderer: tests/unit/test_cli.py)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.photos import image_files, write_variants
from compose.stack import ManagedProcess, wait_http_ok
from tests import api, prometheus
from tests.cli_runs import run
from tests.cluster import Cluster, read_log
from tests.conftest import REPO, Service

MODEL = "efficientnet_lite0"
MODELS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}


def test_classify_wait_json_gives_the_labels(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys,
        "classify",
        "coffee.jpg",
        "cat.jpg",
        "--model",
        MODEL,
        "--wait",
        "--json",
        "--fresh",
        "--url",
        service.base_url,
    )
    assert code == 0, err
    jobs = json.loads(out)
    assert [job["image"] for job in jobs] == ["coffee.jpg", "cat.jpg"]
    assert all(job["status"] == "succeeded" for job in jobs)
    assert jobs[0]["result"][0]["label"] == "espresso"
    assert jobs[1]["result"][0]["label"] in CAT_LABELS
    # On stderr: the batch it created, then the summary (no progress line: the run took
    # less than one interval, and stderr is no terminal).
    lines = err.splitlines()
    assert re.fullmatch(r"batch [0-9a-f]{32}: 2 images", lines[0]), err
    assert re.match(r"2 images: 2 succeeded, 0 failed in [\d.]+ s \([\d.]+ jobs/s\)$", lines[-1])


def test_classify_wait_prints_a_table(service: Service, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "--url", service.base_url, "classify", "coffee.jpg", "cat.jpg", "-m", MODEL, "-w"
    )
    assert code == 0
    header, coffee, cat = out.splitlines()
    assert header.split() == ["IMAGE", "MODEL", "STATUS", "SCORE", "LABEL"]
    assert coffee.split()[:3] == ["coffee.jpg", MODEL, "succeeded"]
    assert coffee.endswith("espresso")
    assert any(cat.endswith(label) for label in CAT_LABELS), cat

    code, out, _ = run(
        capsys, "classify", "coffee.jpg", "-m", MODEL, "-w", "-q", "--top", "5", "--url",
        service.base_url,
    )  # fmt: skip
    assert code == 0
    rows = out.splitlines()
    assert len(rows) == 6
    assert [row.split()[-1] for row in rows[1:3]] == ["espresso", "cup"]


def test_classify_without_wait_prints_job_ids_at_once(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "classify", "rocket.jpg", "-m", MODEL, "--url", service.base_url)
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["JOB", "IMAGE", "MODEL", "STATUS"]
    job_id, image, model, status = row.split()
    assert (image, model) == ("rocket.jpg", MODEL)
    assert status in ("queued", "started", "succeeded")
    # ... and `imgq status JOB_ID --wait` follows it to the end.
    code, out, _ = run(capsys, "status", job_id, "--wait", "--json", "--url", service.base_url)
    assert code == 0
    job = json.loads(out)
    assert (job["job_id"], job["status"]) == (job_id, "succeeded")


def test_models_lists_the_three_models(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "models", "--url", service.base_url)
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["MODEL", "TITLE", "INPUT", "REPLICAS", "VERSIONS"]
    assert [row[0] for row in rows[1:]] == MODELS
    assert [row[2] for row in rows[1:]] == ["224", "240", "260"]
    assert all(int(row[3]) >= 1 for row in rows[1:])

    code, out, _ = run(capsys, "models", "--json", "--url", service.base_url)
    assert [m["name"] for m in json.loads(out)] == MODELS


def test_status_says_ready_and_counts_replicas(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "status", "--url", service.base_url)
    assert code == 0
    assert out.startswith(f"gateway {service.base_url}: ready")
    for name in MODELS:
        assert any(line.split()[:1] == [name] and "online" in line for line in out.splitlines())

    code, out, _ = run(capsys, "status", "--json", "--url", service.base_url)
    status = json.loads(out)
    assert status["ready"] is True
    assert {m["name"]: m["replicas"] >= 1 for m in status["models"]} == dict.fromkeys(MODELS, True)


def test_unknown_image_exits_1_with_the_servers_detail(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    reply = api.post_json(
        service.base_url, "/classifications", {"model": MODEL, "image": "nosuch.jpg"}
    )
    assert reply.status == 422
    detail = reply.json()["detail"]

    code, out, err = run(
        capsys, "classify", "nosuch.jpg", "--model", MODEL, "--url", service.base_url
    )
    assert code == 1
    assert out == ""
    assert err == f"error: {detail}\n"
    assert "Traceback" not in err

    code, _, err = run(
        capsys, "classify", "cat.jpg", "--model", "resnet9000", "--url", service.base_url
    )
    assert code == 1
    assert err.startswith("error: unknown model 'resnet9000'")


def test_a_local_file_is_uploaded_or_refused_clearly(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    """Uploads are multipart posts; a server without an upload endpoint gets a clear error."""
    path = str(REPO / "images" / "coffee.jpg")
    code, out, err = run(
        capsys, "classify", path, "-m", MODEL, "-w", "-q", "--url", service.base_url
    )
    if code == 0:  # the server accepts uploads
        assert "espresso" in out
    else:
        assert code == 1
        assert err.startswith(f"error: {path}: this server does not accept uploads yet"), err


def test_several_files_go_up_in_one_batch(
    service: Service, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    paths = []
    for name in ("coffee.jpg", "cat.jpg"):
        path = tmp_path / f"my-{name}"
        path.write_bytes((REPO / "images" / name).read_bytes())
        paths.append(str(path))
    code, out, err = run(
        capsys, "classify", *paths, "rocket.jpg", "-m", MODEL, "-w", "-q", "--json", "--fresh",
        "--url", service.base_url,
    )  # fmt: skip
    assert code == 0, err
    jobs = json.loads(out)
    assert [job["image"] for job in jobs] == [
        "upload:my-coffee.jpg",
        "upload:my-cat.jpg",
        "rocket.jpg",
    ]
    assert jobs[0]["result"][0]["label"] == "espresso"
    # One request: the batch holds all three jobs.
    assert all(job["status"] == "succeeded" for job in jobs)

    # One bad name is reported (exit 1) and the other images go on without it.
    code, out, err = run(
        capsys, "classify", paths[0], "nosuch.jpg", "-m", MODEL, "--url", service.base_url
    )
    assert code == 1
    [submitted] = out.splitlines()[1:]
    assert submitted.split()[1] == "upload:my-coffee.jpg"
    assert "error: unknown image 'nosuch.jpg'" in err, err


def test_cancel_forgets_a_finished_job(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    job = api.submit(service.base_url, MODEL, "camera.jpg")
    api.wait_final(service.base_url, job["job_id"])
    code, out, _ = run(capsys, "cancel", job["job_id"], "--url", service.base_url)
    assert code == 0
    assert "forgotten" in out
    code, _, err = run(capsys, "status", job["job_id"], "--url", service.base_url)
    assert code == 1
    assert err.startswith("error: ")
    assert "gone" in err


def test_batch_follows_a_batch_created_earlier(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "classify", "cat.jpg", "coffee.jpg", "-m", MODEL, "--fresh",
                       "--url", service.base_url)  # fmt: skip
    assert code == 0
    batch_id = re.search(r"batch ([0-9a-f]{32}): 2 images", err)
    assert batch_id is not None, err
    code, out, _ = run(capsys, "batch", batch_id.group(1), "--wait", "--json", "-q",
                       "--url", service.base_url)  # fmt: skip
    assert code == 0
    batch = json.loads(out)
    assert batch["done"] is True
    assert [j["image"] for j in batch["jobs"]] == ["cat.jpg", "coffee.jpg"]
    assert [j["status"] for j in batch["jobs"]] == ["succeeded", "succeeded"]


BULK_IMAGES = 1000
# A replica is SIGKILLed (and replaced at once, as a restart policy would) when this share of
# the images has its result: by progress, not by the clock, so that a faster machine sees as
# many kills as a slower one.
KILL_AT = (0.1, 0.4, 0.7)


def _client_env() -> dict[str, str]:
    """The environment the command runs in: this checkout's client first on the path."""
    path = os.pathsep.join(
        filter(None, [str(REPO / "client" / "src"), os.environ.get("PYTHONPATH")])
    )
    return {**os.environ, "PYTHONPATH": path}


def _posts(url: str) -> float:
    """Submissions the gateway has answered, by its metrics (every status)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        exposition = prometheus.parse(response.read().decode())
    return sum(
        value
        for labels, value in exposition.series("imgq_http_requests_total").items()
        if ("method", "POST") in labels
    )


@pytest.mark.timeout(600)
def test_a_thousand_images_through_replica_kills_and_a_gateway_restart(
    cluster: Cluster,
    imagenet_sample: Path,
    tmp_path: Path,
    figure: Callable[[str], None],
) -> None:
    folder = tmp_path / "photos"
    # Scaled down: decoding is not what this is about.
    paths = write_variants(image_files(imagenet_sample), BULK_IMAGES, folder, max_side=320)
    assert len({hashlib.sha256(p.read_bytes()).digest() for p in paths}) == BULK_IMAGES
    cluster.start_replica()
    cluster.start_replica()
    gateway, url = cluster.start_gateway()
    cluster.wait_replicas(2)
    out = tmp_path / "results.jsonl"
    stderr = tmp_path / "cli.log"

    def classify(*extra: str) -> subprocess.Popen[bytes]:
        with stderr.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "imgq_cli", "classify", str(folder), "-m", MODEL,
                 "--out", str(out), "--url", url, *extra],
                cwd=REPO, env=_client_env(), stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip

    def lines() -> int:
        return out.read_text().count("\n") if out.exists() else 0

    stop = threading.Event()
    kills = 0

    def killer() -> None:
        nonlocal kills
        for share in KILL_AT:
            while lines() < share * BULK_IMAGES:
                if stop.wait(0.05):
                    return
            # Only replicas at work (their health file is touched once their model is loaded
            # and their first heartbeat is out): killing one still loading proves little.
            health = cluster.stack.log_dir
            working: list[ManagedProcess] = []
            while not working:
                working = [
                    r for r in cluster.live_replicas() if (health / f"{r.name}.alive").exists()
                ]
                if not working and stop.wait(0.05):
                    return
            random.choice(working).kill()  # SIGKILL, mid-batch more often than not
            kills += 1
            cluster.start_replica()

    started = time.monotonic()
    cli = classify()
    chaos = threading.Thread(target=killer, daemon=True)
    chaos.start()
    try:
        deadline = time.monotonic() + 300
        while lines() < BULK_IMAGES // 4 and cli.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cli.poll() is None, "the run ended before the gateway could be restarted"
        gateway.terminate()  # SIGTERM: a restart, in-flight requests answered or dropped
        gateway = cluster.stack.respawn(gateway)
        code = cli.wait(timeout=300)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        chaos.join()
        if cli.poll() is None:
            cli.kill()
    log = stderr.read_text()
    assert code == 0, log[-3000:]
    assert kills == len(KILL_AT), kills

    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["image"] for r in records) == sorted(str(p) for p in paths)  # one line each
    failed = [r for r in records if r["status"] != "succeeded"]
    assert not failed, failed[:5]
    # The service made one job per image, whatever the retries: the event log (the record
    # every gateway rebuilds from; a restarted gateway's counters start from zero) says so.
    jobs: dict[str, set[str]] = {}
    for event in read_log(cluster.node.url):
        jobs.setdefault(event.image, set()).add(event.job_id)
    assert {image: len(ids) for image, ids in jobs.items()} == {
        f"upload:{p.name}": 1 for p in paths
    }
    assert {r["job_id"] for r in records} == {next(iter(ids)) for ids in jobs.values()}

    # Resumed, nothing is left to submit: the gateway's metrics see no submission.
    wait_http_ok(f"{url}/readyz", 60, gateway)
    before = _posts(url)
    assert classify("--resume").wait(timeout=120) == 0
    assert _posts(url) == before
    assert len(out.read_text().splitlines()) == BULK_IMAGES
    retries = log.count("trying again")
    figure(
        f"{BULK_IMAGES} images through the CLI, {kills} replica SIGKILLs, the gateway "
        f"restarted once: {elapsed:.1f} s ({BULK_IMAGES / elapsed:.1f} jobs/s), one job per "
        f"image, {retries} requests retried; --resume submitted nothing"
    )
