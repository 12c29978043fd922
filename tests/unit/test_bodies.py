"""gateway/bodies.py: request bodies in memory, bounded per client and for the gateway.

The budget on its own, as units (a real gateway flooded with huge uploads:
tests/service/test_bodies.py)."""

from __future__ import annotations

import pytest

from gateway.bodies import BodyBytes
from gateway.clients import Caller
from gateway.problems import from_error
from shared.errors import TooManyRequests, UploadsBusy

ALICE = Caller("alice", "10.0.0.1")
BOB = Caller("bob", "10.0.0.2")


def test_a_client_holds_at_most_its_budget_and_gets_it_back() -> None:
    bodies = BodyBytes(per_client=100, total=150)
    with bodies.lease(ALICE) as first:
        first.cover(60)
        first.cover(40)  # already held: nothing more
        with bodies.lease(ALICE) as second:
            second.cover(40)
            with pytest.raises(TooManyRequests) as refused:
                second.cover(41)
            assert bodies.of(ALICE) == 100  # the refused bytes were not taken
            header = from_error(refused.value).headers["Retry-After"]
            assert f"Retry in {header} s" in refused.value.message
            assert "100 at once" in refused.value.message
        assert bodies.of(ALICE) == 60
    assert bodies.of(ALICE) == 0
    assert bodies.held == 0


def test_the_gateway_holds_at_most_its_budget_for_everyone() -> None:
    bodies = BodyBytes(per_client=100, total=150)
    with bodies.lease(ALICE) as alices, bodies.lease(BOB) as bobs:
        alices.cover(100)
        bobs.cover(50)
        with bodies.lease(Caller(None, "10.0.0.3")) as carols, pytest.raises(UploadsBusy):
            carols.cover(1)
        assert from_error(UploadsBusy("x")).status == 503
    assert bodies.held == 0
