"""gateway/shares.py: each client's share of the fleet, as jobs in flight.  Pure unit tests."""

from __future__ import annotations

import pytest

from gateway.clients import Caller, RateLimiter
from gateway.problems import from_error
from gateway.shares import ACTIVE_SECONDS, SHARE_PER_REPLICA, ClientShares, JobShares
from shared.errors import TooManyRequests
from shared.messages import ClassifyRequest, JobEvent, new_job_id
from shared.states import JobStatus

ALICE = Caller("alice", "10.0.0.1")
BOB = Caller("bob", "10.0.0.2")
CAROL = Caller(None, "10.0.0.3")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _shares(alone: int = 64, replicas: int = 2) -> tuple[JobShares, Clock]:
    clock = Clock()
    return JobShares(alone, lambda: replicas, clock), clock


def _publish(shares: JobShares, client: Caller, count: int = 1) -> list[str]:
    """``count`` jobs of ``client`` accepted and published, as Jobs.accept_all does it."""
    job_ids = [new_job_id() for _ in range(count)]
    with shares.reserve(client, count) as seats:
        for job_id in job_ids:
            seats.take(job_id)
    return job_ids


def _final(shares: JobShares, job_id: str, status: JobStatus = JobStatus.SUCCEEDED) -> None:
    request = ClassifyRequest(job_id=job_id, model="m", image_name="i", image=b"x", queued_at=1.0)
    queued = JobEvent.for_request(request, JobStatus.QUEUED)
    shares.job_changed(queued, queued.advance(status))


def test_a_client_alone_has_the_whole_share() -> None:
    shares, _ = _shares(alone=64)
    _publish(shares, ALICE, 63)
    assert shares.share(ALICE) == 64
    shares.check(ALICE)  # room for one more
    with pytest.raises(TooManyRequests, match="64 is the most one client may have"):
        shares.check(ALICE, 2)
    _publish(shares, ALICE)
    with pytest.raises(TooManyRequests) as refused:
        shares.check(ALICE)
    assert refused.value.retry_after == 1


def test_with_others_the_fleet_is_divided() -> None:
    shares, _ = _shares(alone=64, replicas=4)
    _publish(shares, ALICE, 40)
    _publish(shares, BOB)  # Bob has nothing in flight: one request always gets in
    # Two clients, four replicas: a job a replica, divided between them.
    assert SHARE_PER_REPLICA == 1
    assert shares.share(ALICE) == shares.share(BOB) == 2
    with pytest.raises(TooManyRequests, match="2 is its share while 2 clients are submitting"):
        shares.check(ALICE)
    shares.check(BOB)  # Bob has 1 of his 2
    _publish(shares, CAROL)
    assert shares.share(BOB) == 2  # ceil(4 / 3)
    # Never less than one job each, however many clients.
    many, _ = _shares(alone=64, replicas=1)
    for i in range(10):
        _publish(many, Caller(None, f"10.1.0.{i}"))
    assert many.share(ALICE) == 1


def test_a_client_with_nothing_in_flight_may_always_send_one_request() -> None:
    shares, _ = _shares(alone=4)
    shares.check(ALICE, 50)  # a batch larger than any share: once nothing is in flight
    ids = _publish(shares, ALICE, 50)
    with pytest.raises(TooManyRequests):
        shares.check(ALICE)
    for job_id in ids:
        _final(shares, job_id)
    shares.check(ALICE, 50)


def test_a_job_gives_its_seat_back_when_it_is_final_or_gone() -> None:
    shares, _ = _shares(alone=2)
    first, second = _publish(shares, ALICE, 2)
    with pytest.raises(TooManyRequests):
        shares.check(ALICE)
    _final(shares, first, JobStatus.CANCELLED)
    assert shares.in_flight(ALICE) == 1
    shares.job_removed(second)  # its publish failed: discarded from the store
    assert shares.in_flight(ALICE) == 0
    # A job that started is still in flight; an unknown job changes nothing.
    [third] = _publish(shares, ALICE)
    request = ClassifyRequest(job_id=third, model="m", image_name="i", image=b"x", queued_at=1.0)
    queued = JobEvent.for_request(request, JobStatus.QUEUED)
    shares.job_changed(queued, queued.advance(JobStatus.STARTED))
    _final(shares, new_job_id())
    assert shares.in_flight(ALICE) == 1


def test_seats_not_taken_are_given_back() -> None:
    """A replayed idempotency key or a reused result publishes nothing: its seat is free."""
    shares, _ = _shares(alone=3)
    with shares.reserve(ALICE, 3) as seats:
        seats.take(new_job_id())
        assert shares.in_flight(ALICE) == 3
    assert shares.in_flight(ALICE) == 1
    with shares.reserve(ALICE, 1) as seats:
        seats.take(new_job_id())
        with pytest.raises(RuntimeError, match="more jobs than seats"):
            seats.take(new_job_id())
    assert shares.in_flight(ALICE) == 2


def test_a_client_counts_as_submitting_a_while_after_its_last_job() -> None:
    shares, clock = _shares(alone=64, replicas=4)
    _publish(shares, ALICE, 10)
    [bobs] = _publish(shares, BOB)
    _final(shares, bobs)
    # Bob waits for each result before sending the next: between jobs he still counts.
    clock.now += ACTIVE_SECONDS / 2
    assert shares.share(ALICE) == 2
    # Gone quiet: Alice has the whole fleet again.
    clock.now += ACTIVE_SECONDS
    assert shares.share(ALICE) == 64
    # A client with jobs in flight counts however long ago it submitted them.
    _publish(shares, BOB)
    clock.now += 10 * ACTIVE_SECONDS
    assert shares.share(ALICE) == 2


def test_no_limit_when_the_share_is_zero() -> None:
    shares, _ = _shares(alone=0)
    _publish(shares, ALICE, 1000)
    _publish(shares, BOB, 1000)
    shares.check(ALICE, 1000)


def test_client_shares_charge_jobs_and_the_rate_all_or_nothing() -> None:
    jobs, _ = _shares(alone=64)
    rate = RateLimiter(rate=1.0, burst=3)
    shares = ClientShares(jobs, rate)
    shares.check(ALICE)
    with pytest.raises(TooManyRequests), shares.reserve(ALICE, 4):
        pass
    assert jobs.in_flight(ALICE) == 0  # nothing held by a refusal
    with shares.reserve(ALICE, 3) as seats:
        for _ in range(3):
            seats.take(new_job_id())
    # The bucket is empty now: refused before the body is read.
    with pytest.raises(TooManyRequests):
        shares.check(ALICE)


@pytest.mark.parametrize("tokens", [0.0, 0.5, 0.99])
def test_a_429_says_when_to_retry_as_its_header_does(tokens: float) -> None:
    limiter = RateLimiter(rate=50.0, burst=100)
    for _ in range(100):
        limiter.take(ALICE, now=5.0)
    with pytest.raises(TooManyRequests) as refused:
        limiter.take(ALICE, now=5.0 + tokens / 50.0)
    header = from_error(refused.value).headers["Retry-After"]
    assert f"retry in {header} s" in refused.value.message, refused.value.message
    shares, _ = _shares(alone=1)
    _publish(shares, BOB)
    with pytest.raises(TooManyRequests) as over:
        shares.check(BOB)
    header = from_error(over.value).headers["Retry-After"]
    assert f"retry in {header} s" in over.value.message, over.value.message
