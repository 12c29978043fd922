"""Who may publish which event to the log (gateway/senders.py), as a pure unit test."""

from __future__ import annotations

import pytest

from gateway.senders import Senders
from shared.messages import BatchRecord, JobEvent, JobFailure, JobForgotten, new_job_id
from shared.states import JobStatus
from shared.wire import LogEntry, Marker

SENDERS = Senders(gateways=frozenset({"imgq-gateway"}), classifiers=frozenset({"imgq-classifier"}))
JOB = JobEvent(new_job_id(), JobStatus.QUEUED, "efficientnet_lite0", "cat.jpg")


@pytest.mark.parametrize(
    ("entry", "gateway", "classifier"),
    [
        (JOB, True, False),
        (JOB.advance(JobStatus.CANCELLED), True, False),
        (Marker("m"), True, False),
        (JobForgotten(JOB.job_id, 1.0), True, False),
        (JOB.advance(JobStatus.STARTED), False, True),
        (JOB.advance(JobStatus.SUCCEEDED), False, True),
        (JOB.advance(JobStatus.SUCCEEDED, reused_from=new_job_id()), True, True),
        (JOB.advance(JobStatus.FAILED, error=JobFailure("image_decode_failed", "x")), False, True),
        (JOB.advance(JobStatus.FAILED, error=JobFailure("dead_lettered", "x")), True, True),
    ],
)
def test_each_event_is_trusted_only_from_its_senders(
    entry: LogEntry, gateway: bool, classifier: bool
) -> None:
    assert (SENDERS.refuses(entry, "imgq-gateway") is None) is gateway
    assert (SENDERS.refuses(entry, "imgq-classifier") is None) is classifier
    assert SENDERS.refuses(entry, "imgq-producer") is not None
    assert SENDERS.refuses(entry, None) is not None


def test_unconfigured_senders_trust_everyone() -> None:
    assert Senders().refuses(JOB, None) is None
    assert Senders.from_env({}).enforced is False
    assert Senders.from_env({"IMGQ_GATEWAY_USERS": "a,b"}).gateways == {"a", "b"}


def test_a_batch_record_is_trusted_only_from_a_gateway() -> None:
    record = BatchRecord(new_job_id(), "efficientnet_lite0", (JOB.job_id,), None, 1.0)
    assert SENDERS.refuses(record, "imgq-gateway") is None
    assert SENDERS.refuses(record, "imgq-classifier") is not None


def test_requests_are_a_gateways_when_a_gateway_user_sent_them() -> None:
    assert SENDERS.requesters("whoever") == {"imgq-gateway"}
    # Unconfigured: this gateway's own user (gateways usually share one).
    assert Senders().requesters("imgq-gateway") == {"imgq-gateway"}
