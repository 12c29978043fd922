"""No client can harm another: the per-client limits on their own.

The rate bucket, the open waits counted per client, and which proxies may name the client
(the shares and tokens on real gateways: tests/service/test_client_limits.py)."""

from __future__ import annotations

import pytest

from gateway.clients import Caller, OpenWaits, RateLimiter
from shared.errors import SettingsError, TooManyRequests


def test_the_bucket_refills_at_the_rate_and_says_when_to_retry() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    alice, bob = Caller("a", "1.1.1.1"), Caller("b", "1.1.1.1")
    for _ in range(3):
        limiter.take(alice, now=100.0)
    with pytest.raises(TooManyRequests) as refused:
        limiter.take(alice, now=100.0)
    assert refused.value.retry_after == pytest.approx(0.5)
    limiter.take(bob, now=100.0)  # another client's share is untouched
    limiter.take(alice, now=100.5)  # half a second later: one more token


def test_open_waits_are_counted_per_client_and_released() -> None:
    waits = OpenWaits(per_client=2)
    alice = Caller(None, "10.0.0.1")
    with waits.hold(alice), waits.hold(alice):
        with pytest.raises(TooManyRequests), waits.hold(alice):
            pass
        with waits.hold(Caller(None, "10.0.0.2")):
            pass
    assert waits.count(alice) == 0


def test_only_a_trusted_proxy_names_the_client() -> None:
    from gateway.clients import ClientLimits

    limits = ClientLimits.from_env({"IMGQ_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1"})
    assert limits.client_address("10.1.2.3", "203.0.113.9") == "203.0.113.9"
    assert limits.client_address("10.1.2.3", "1.1.1.1, 203.0.113.9") == "203.0.113.9"
    assert limits.client_address("198.51.100.7", "203.0.113.9") == "198.51.100.7"
    assert limits.client_address("10.1.2.3", None) == "10.1.2.3"
    assert ClientLimits().client_address("10.1.2.3", "203.0.113.9") == "10.1.2.3"
    with pytest.raises(SettingsError):
        ClientLimits.from_env({"IMGQ_TRUSTED_PROXIES": "not-an-address"})
