"""gateway/webhook_signing.py: Stripe's scheme, each client's secret, and the example receiver
(examples/webhook_receiver.py) agreeing with both."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import ModuleType

import pytest

from gateway.clients import owner_of
from gateway.webhook_settings import WebhookSettings
from gateway.webhook_signing import (
    TOLERANCE_SECONDS,
    WebhookSecrets,
    secret_for_token,
    signature,
    verify,
)
from shared.errors import SettingsError
from tests.api import REPO

SECRET = "0123456789abcdef0123456789abcdef"
BODY = b'{"id":"d","type":"job.succeeded","job":{}}'
NOW = 1_764_072_000


def test_a_signature_is_hmac_sha256_of_the_timestamp_a_dot_and_the_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1764072000." + BODY, hashlib.sha256).hexdigest()
    assert signature(SECRET, NOW, BODY) == f"t={NOW},v1={expected}"


def test_a_receiver_accepts_only_the_body_it_was_sent_with_its_secret_recently() -> None:
    header = signature(SECRET, NOW, BODY)
    assert verify(SECRET, header, BODY, NOW)
    assert verify(SECRET, header, BODY, NOW + TOLERANCE_SECONDS)
    assert verify(SECRET, header, BODY, NOW - TOLERANCE_SECONDS)
    assert not verify(SECRET, header, BODY + b" ", NOW)
    assert not verify(SECRET[::-1], header, BODY, NOW)
    # Replayed later (or a clock far ahead): refused.
    assert not verify(SECRET, header, BODY, NOW + TOLERANCE_SECONDS + 1)
    assert not verify(SECRET, header, BODY, NOW - TOLERANCE_SECONDS - 1)
    # The timestamp is signed: moving it breaks the signature.
    moved = header.replace(f"t={NOW}", f"t={NOW + 60}")
    assert not verify(SECRET, moved, BODY, NOW + 60)
    for broken in ("", "v1=abc", f"t={NOW}", f"t=soon,v1={header.split('v1=')[1]}"):
        assert not verify(SECRET, broken, BODY, NOW), broken
    # While a secret changes, a header may list more than one signature: any match will do.
    assert verify(SECRET, f"{header},v1={'0' * 64}", BODY, NOW)
    assert verify(SECRET, f"t={NOW},v1={'0' * 64},{header.split(',')[1]}", BODY, NOW)


def test_a_tokens_secret_is_what_its_client_computes_from_it() -> None:
    assert (
        secret_for_token("alice-token")
        == hmac.new(b"alice-token", b"imgq-webhook-secret", hashlib.sha256).hexdigest()
    )
    assert secret_for_token("alice-token") != secret_for_token("bob-token")
    assert secret_for_token(b"alice-token") == secret_for_token("alice-token")


def test_whose_secret_signs_a_job() -> None:
    secrets = WebhookSecrets(("alice-token", "bob-token"), configured=SECRET)
    assert secrets.for_owner(owner_of(b"alice-token")) == secret_for_token("alice-token")
    assert secrets.for_owner(owner_of(b"bob-token")) == secret_for_token("bob-token")
    # A job submitted without a token: the configured secret.
    assert secrets.for_owner(None) == SECRET
    # A token no longer configured: nothing signs its jobs, and nothing else may.
    assert secrets.for_owner(owner_of(b"carol-token")) is None
    assert not secrets.can_sign(owner_of(b"carol-token"))
    open_gateway = WebhookSecrets((), configured=None)
    assert not open_gateway.can_sign(None)


def test_the_configured_secret_is_long_enough_to_be_one() -> None:
    with pytest.raises(SettingsError, match="at least 32 characters"):
        WebhookSettings.from_env({"IMGQ_WEBHOOK_SECRET": "short"})
    assert WebhookSettings.from_env({"IMGQ_WEBHOOK_SECRET": SECRET}).secret == SECRET
    assert WebhookSettings.from_env({"IMGQ_WEBHOOK_SECRET": "  "}).secret is None
    assert SECRET not in repr(WebhookSettings.from_env({"IMGQ_WEBHOOK_SECRET": SECRET}))


# -- the example receiver ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def example() -> ModuleType:
    path = REPO / "examples" / "webhook_receiver.py"
    spec = importlib.util.spec_from_file_location("webhook_receiver", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_derives_and_checks_as_the_gateway_signs(example: ModuleType) -> None:
    assert example.secret_for_token("alice-token") == secret_for_token("alice-token")
    header = signature(SECRET, NOW, BODY)
    assert example.verify(SECRET, header, BODY, NOW)
    assert not example.verify(SECRET, header, BODY + b" ", NOW)
    assert not example.verify(SECRET, header, BODY, NOW + TOLERANCE_SECONDS + 1)


@pytest.fixture
def example_server(example: ModuleType) -> Iterator[tuple[str, list[dict[str, object]]]]:
    handled: list[dict[str, object]] = []
    handler = example.make_handler(SECRET, example.Seen())
    server = example.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    example.handle = handled.append  # the receiver's "your code"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/imgq", handled
    finally:
        server.shutdown()
        server.server_close()


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_example_refuses_forgeries_and_handles_each_delivery_once(
    example_server: tuple[str, list[dict[str, object]]],
) -> None:
    url, handled = example_server
    body = b'{"id": "d1", "type": "job.succeeded", "job": {"job_id": "j", "status": "succeeded"}}'
    now = int(time.time())
    signed = {"Imgq-Signature": signature(SECRET, now, body), "Imgq-Delivery": "d1"}
    assert _post(url, body, {**signed, "Imgq-Signature": signature("x" * 32, now, body)}) == 401
    assert _post(url, body + b" ", signed) == 401
    assert handled == []
    assert _post(url, body, signed) == 200
    assert _post(url, body, signed) == 200  # a repeat: answered, not handled again
    assert [payload["id"] for payload in handled] == ["d1"]
