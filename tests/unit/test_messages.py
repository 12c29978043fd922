"""The broker message schemas: round trips, and strict rejection of what does not fit."""

from __future__ import annotations

import orjson
import pytest

from shared.errors import MessageError
from shared.messages import (
    AnnouncedModel,
    ClassifyRequest,
    CrashReport,
    JobEvent,
    JobFailure,
    Label,
    ReplicaHeartbeat,
    is_job_id,
    new_job_id,
)
from shared.states import JobStatus


def _request() -> ClassifyRequest:
    return ClassifyRequest(
        new_job_id(), "efficientnet_lite0", "cat.jpg", 1.5, image=b"\xff\xd8\x00"
    )


def test_a_known_digest_is_not_recomputed() -> None:
    request = ClassifyRequest(new_job_id(), "m", "a.jpg", 1.0, image_sha256="cafe", image=b"bytes")
    assert request.image_sha256 == "cafe"


def test_event_round_trip() -> None:
    event = JobEvent.for_request(_request(), JobStatus.QUEUED).advance(
        JobStatus.SUCCEEDED,
        started_at=2.0,
        finished_at=3.0,
        replica="r1",
        result=(Label("tabby", 281, 0.5),) * 5,
    )
    assert JobEvent.from_json(event.to_json()) == event
    # The version that ran travels with the job's events.
    ran = event.advance(JobStatus.SUCCEEDED, model_version="2")
    assert JobEvent.from_json(ran.to_json()).model_version == "2"

    failed = event.advance(JobStatus.FAILED, result=None, error=JobFailure("x", "why"))
    assert JobEvent.from_json(failed.to_json()).error == JobFailure("x", "why")


def test_event_rejects_unknown_status() -> None:
    data = orjson.loads(JobEvent.for_request(_request(), JobStatus.QUEUED).to_json())
    data["status"] = "exploded"
    with pytest.raises(MessageError, match="unknown status"):
        JobEvent.from_json(orjson.dumps(data))


def test_heartbeat_round_trip() -> None:
    beat = ReplicaHeartbeat("r1", ("efficientnet_lite0",), 3, True, 5.0, 10.0)
    assert ReplicaHeartbeat.from_json(beat.to_json()) == beat
    info = {"resnet18": AnnouncedModel("ResNet18", 224)}
    beat = ReplicaHeartbeat("r1", ("resnet18",), 3, True, 5.0, 10.0, info)
    assert ReplicaHeartbeat.from_json(beat.to_json()) == beat


def test_a_heartbeat_says_whether_its_replica_is_stalled() -> None:
    beat = ReplicaHeartbeat("r1", ("m",), 0, True, 5.0, 10.0, stalled=True)
    assert ReplicaHeartbeat.from_json(beat.to_json()).stalled is True
    data = orjson.loads(beat.to_json())
    del data["stalled"]  # an older replica's heartbeat
    assert ReplicaHeartbeat.from_json(orjson.dumps(data)).stalled is False
    data["stalled"] = "yes"
    with pytest.raises(MessageError, match="stalled"):
        ReplicaHeartbeat.from_json(orjson.dumps(data))


def test_crash_report_round_trip() -> None:
    report = CrashReport("r1", "life", (new_job_id(), new_job_id()), 12.5)
    assert CrashReport.from_json(report.to_json()) == report
    data = orjson.loads(report.to_json()) | {"jobs": ["../etc"]}
    with pytest.raises(MessageError, match="jobs"):
        CrashReport.from_json(orjson.dumps(data))


def test_heartbeat_model_info_is_optional_but_checked() -> None:
    data = orjson.loads(ReplicaHeartbeat("r1", ("m",), 0, False, 5.0, 10.0).to_json())
    del data["model_info"]
    assert ReplicaHeartbeat.from_json(orjson.dumps(data)).model_info == {}
    data["model_info"] = {"m": {"title": "M", "input_size": "224"}}
    with pytest.raises(MessageError, match="input_size"):
        ReplicaHeartbeat.from_json(orjson.dumps(data))


def test_job_ids_are_unguessable_hex() -> None:
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_job_id(i) for i in ids)
    assert not is_job_id("0" * 31)
    assert not is_job_id(None)


def test_status_only_moves_forward() -> None:
    assert JobStatus.QUEUED.may_become(JobStatus.STARTED)
    assert JobStatus.STARTED.may_become(JobStatus.SUCCEEDED)
    assert not JobStatus.SUCCEEDED.may_become(JobStatus.STARTED)
    assert not JobStatus.FAILED.may_become(JobStatus.SUCCEEDED)
    assert not JobStatus.STARTED.may_become(JobStatus.STARTED)
