"""shared/logs.py and gateway/access_log.py in real services: both started with
IMGQ_LOG_FORMAT=json, and the access log turned off (the settings, the JSON lines and the
access log line on their own: tests/unit/test_logs.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests import api
from tests.cluster import MODEL, Cluster


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines, f"{path} is empty"
    entries = []
    for number, line in enumerate(lines, start=1):
        try:
            entries.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pytest.fail(f"{path.name} line {number} is not JSON: {line!r}")
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
    return entries


def _wait_for(path: Path, found: Any, what: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        entries = _json_lines(path)
        if any(found(entry) for entry in entries):
            return entries
        assert time.monotonic() < deadline, f"{path.name}: no {what}"
        time.sleep(0.2)


def test_both_services_write_json_lines_and_job_lines_carry_job_id_and_model(
    cluster: Cluster,
) -> None:
    json_logs = {"IMGQ_LOG_FORMAT": "json"}
    gateway, url = cluster.start_gateway(**json_logs)
    replica = cluster.start_replica(**json_logs)
    cluster.wait_replicas(1)
    job = api.submit(url, MODEL, "coffee.jpg")
    job_id = job["job_id"]
    assert api.wait_final(url, job_id)["status"] == "succeeded"
    missing = api.get(url, "/no/such/page")
    assert missing.status == 404

    def about_job(entry: dict[str, Any]) -> bool:
        return entry.get("job_id") == job_id

    replica_lines = _wait_for(replica.log_file, about_job, "line about the job")
    gateway_lines = _wait_for(
        gateway.log_file, lambda e: e.get("path") == "/no/such/page", "access line for the 404"
    )
    for lines in (gateway_lines, replica_lines):
        job_lines = [entry for entry in lines if about_job(entry)]
        assert job_lines
        # A line about the job says which model, except the access log's (the URL names
        # the job; the model is in the answer's body, which the access log does not read).
        assert all(
            entry["model"] == MODEL for entry in job_lines if entry["logger"] != "aiohttp.access"
        ), job_lines
        assert not [entry for entry in lines if job_id in entry["message"] and not about_job(entry)]
    assert any("succeeded" in entry["message"] for entry in replica_lines if about_job(entry))
    assert any(
        entry["logger"] == "gateway.submissions" and entry["model"] == MODEL
        for entry in gateway_lines
        if about_job(entry)
    )
    access = [entry for entry in gateway_lines if entry["logger"] == "aiohttp.access"]
    polls = [entry for entry in access if entry.get("job_id") == job_id]
    assert polls
    assert all(entry["method"] == "GET" and entry["status"] == 200 for entry in polls)
    assert any(entry["path"] == "/no/such/page" and entry["status"] == 404 for entry in access)
    assert {"method", "path", "status", "size", "duration", "client"} <= set(access[0])


def test_the_access_log_can_be_turned_off(cluster: Cluster) -> None:
    gateway, url = cluster.start_gateway(IMGQ_LOG_FORMAT="json", IMGQ_ACCESS_LOG="false")
    job = api.submit(url, MODEL, "coffee.jpg")
    # The job's own line is written: the log is on, only the access log is off.
    lines = _wait_for(
        gateway.log_file, lambda e: e.get("job_id") == job["job_id"], "line about the job"
    )
    assert api.get(url, "/healthz").status == 200
    assert not [
        entry for entry in _json_lines(gateway.log_file) if entry["logger"] == "aiohttp.access"
    ]
    assert lines
