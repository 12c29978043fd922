"""gateway/callbacks.py: which callback URLs a client may name and which addresses they may
reach; and the intake taking a ``callback_url`` on every body of both routes, in-process
(tests/unit/test_intake.py's stand-in broker).  No network: hosts are IP literals or resolved by a
stand-in resolver.  On the real service: tests/service/test_webhooks_service.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from gateway.callbacks import (
    AddressPolicy,
    CallbackRules,
    checked_addresses,
    parse_callback_url,
    parse_networks,
)
from gateway.clients import owner_of
from gateway.webhook_settings import WebhookSettings
from imgq.http_wire import Upload, encode_multipart
from shared.errors import CallbackRefused, SettingsError
from shared.messages import MAX_CALLBACK_CHARS
from tests.unit.test_intake import ALICE, MODEL, Broker, finish, run
from tests.unit.test_intake import _jpeg as jpeg

PUBLIC = "https://93.184.216.34/hooks/imgq"
LOOPBACK_ALLOWED = AddressPolicy(parse_networks("test", ("127.0.0.0/8",)))

# -- the URL --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "url", "host", "port"),
    [
        ("https://example.com/hook", "https://example.com/hook", "example.com", 443),
        (
            "http://example.com:8080/a?b=c#frag",
            "http://example.com:8080/a?b=c",
            "example.com",
            8080,
        ),
        ("HTTPS://Example.COM/x", "https://example.com/x", "example.com", 443),
        ("https://bücher.example/", "https://xn--bcher-kva.example/", "xn--bcher-kva.example", 443),
        ("http://[2606:4700::1111]:81/", "http://[2606:4700::1111]:81/", "2606:4700::1111", 81),
    ],
)
def test_a_url_is_normalised_with_its_host_and_port(
    raw: str, url: str, host: str, port: int
) -> None:
    parsed = parse_callback_url(raw)
    assert (parsed.url, parsed.host, parsed.port) == (url, host, port)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("ftp://example.com/", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("example.com/hook", "http or https"),
        ("/hook", "http or https"),
        ("http:///hook", "http or https"),
        ("https://user:pw@example.com/", "user name or password"),
        ("https://token@example.com/", "user name or password"),
        ("https://example.com/a b", "spaces or control characters"),
        ("https://example.com/\r\nX-Injected: 1", "spaces or control characters"),
        ("", "1 to 2048 characters"),
        ("https://example.com/" + "a" * MAX_CALLBACK_CHARS, "1 to 2048 characters"),
        # Addresses a resolver would read as 127.0.0.1, written to slip past a check of the text.
        ("http://2130706433/", "four numbers"),
        ("http://127.1/", "four numbers"),
        ("http://0x7f.0.0.1/", "four numbers"),
    ],
)
def test_what_is_not_a_callback_url_is_refused_saying_why(raw: str, words: str) -> None:
    with pytest.raises(CallbackRefused, match=words):
        parse_callback_url(raw)


# -- the addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.8.9.10", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.0.1", "a private address"),
        ("fd12:3456::1", "a private address"),
        ("169.254.169.254", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("fe80::1%eth0", "a link-local address"),
        ("224.0.0.251", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("240.0.0.1", "a private address"),  # reserved (240/4), which Python counts as private
        ("100.64.0.1", "a non-global address"),  # shared address space (carrier NAT)
        ("192.0.2.10", "a private address"),  # documentation
        # IPv6 that only wraps an IPv4 address reaches that address.
        ("::ffff:10.0.0.1", "a private address"),
        ("2002:a00:1::", "a private address"),  # 6to4 of 10.0.0.1
        ("2002:7f00:1::", "a loopback address"),  # 6to4 of 127.0.0.1
        ("not-an-ip", "not an IP address"),
    ],
)
def test_addresses_that_are_not_public_are_refused(address: str, kind: str) -> None:
    assert AddressPolicy().refusal(address) == kind


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "2002:808:808::"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert AddressPolicy().refusal(address) is None


def test_an_operator_allows_networks_and_only_those() -> None:
    policy = AddressPolicy(parse_networks("X", ("127.0.0.0/8", "10.20.0.0/16", "fd00::/8")))
    for allowed in ("127.0.0.1", "10.20.3.4", "fd12::1"):
        assert policy.refusal(allowed) is None, allowed
    assert policy.refusal("10.21.0.1") == "a private address"
    assert policy.refusal("::1") == "a loopback address"  # IPv4's loopback does not cover it
    assert policy.refusal("169.254.169.254") == "a link-local address"


def test_a_network_setting_that_is_not_a_network_is_refused() -> None:
    with pytest.raises(SettingsError, match="IMGQ_WEBHOOK_ALLOW_NETWORKS: 'nope'"):
        WebhookSettings.from_env({"IMGQ_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8,nope"})
    settings = WebhookSettings.from_env({"IMGQ_WEBHOOK_ALLOW_NETWORKS": "10.1.2.3, ::1"})
    assert settings.policy.refusal("10.1.2.3") is None
    assert settings.policy.refusal("10.1.2.4") == "a private address"


def _resolver(answers: dict[str, list[str] | Exception]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        answer = answers[host]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return resolve


def test_every_address_of_a_name_must_be_allowed() -> None:
    resolve = _resolver(
        {
            "good.example": ["93.184.216.34", "2606:4700::1111"],
            "mixed.example": ["93.184.216.34", "10.0.0.5"],
            "inside.example": ["169.254.169.254"],
            "gone.example": OSError("Name or service not known"),
            "empty.example": [],
        }
    )

    def check(host: str) -> list[str]:
        return asyncio.run(checked_addresses(host, 443, AddressPolicy(), resolve))

    assert check("good.example") == ["93.184.216.34", "2606:4700::1111"]
    with pytest.raises(CallbackRefused, match=r"resolves to 10\.0\.0\.5, a private address"):
        check("mixed.example")
    with pytest.raises(CallbackRefused, match="a link-local address"):
        check("inside.example")
    with pytest.raises(CallbackRefused, match="does not resolve: Name or service not known"):
        check("gone.example")
    with pytest.raises(CallbackRefused, match="has no address"):
        check("empty.example")
    # An IP address is checked as it is, never resolved.
    with pytest.raises(CallbackRefused, match=r"10\.0\.0\.9 is a private address"):
        check("10.0.0.9")


def test_a_name_that_does_not_resolve_in_time_is_refused() -> None:
    async def never(host: str, port: int) -> list[str]:
        await asyncio.Event().wait()
        return []

    with pytest.raises(CallbackRefused, match="did not resolve within"):
        asyncio.run(checked_addresses("slow.example", 443, AddressPolicy(), never, seconds=0.01))


def test_a_client_whose_callbacks_nothing_signs_may_name_none() -> None:
    rules = CallbackRules(lambda owner: owner is not None, AddressPolicy())
    assert asyncio.run(rules.check(PUBLIC, "some-owner")) == PUBLIC
    with pytest.raises(CallbackRefused, match="no secret to sign them with"):
        asyncio.run(rules.check(PUBLIC, None))


# -- the intake -----------------------------------------------------------------------------

SECRET_ENV = {"IMGQ_WEBHOOK_SECRET": "s" * 32}


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def test_every_body_of_both_routes_may_name_a_callback() -> None:
    async def scenario(client: Any, app: web.Application, broker: Broker) -> None:
        json_headers = {**ALICE, "Content-Type": "application/json"}
        single = {"model": MODEL, "image": "cat.jpg", "callback_url": PUBLIC}
        reply = await client.post("/classifications", data=_json(single), headers=json_headers)
        assert reply.status == 202, await reply.text()
        form = {"model": MODEL, "image": "cat.jpg", "callback_url": PUBLIC + "?form"}
        reply = await client.post("/classifications", data=form, headers=ALICE)
        assert reply.status == 202, await reply.text()
        content_type, body = encode_multipart(
            {"model": MODEL, "callback_url": PUBLIC + "?multipart"},
            [Upload("file", "a.jpg", jpeg(1))],
        )
        reply = await client.post(
            "/classifications", data=body, headers={**ALICE, "Content-Type": content_type}
        )
        assert reply.status == 202, await reply.text()
        batch = {"model": MODEL, "images": ["cat.jpg", "coffee.jpg"], "callback_url": PUBLIC + "?b"}
        reply = await client.post("/batches", data=_json(batch), headers=json_headers)
        assert reply.status == 202, await reply.text()
        content_type, body = encode_multipart(
            {"model": MODEL, "callback_url": PUBLIC + "?bm"},
            [Upload("file", "a.jpg", jpeg(2)), ("image", "cat.jpg")],
        )
        reply = await client.post(
            "/batches", data=body, headers={**ALICE, "Content-Type": content_type}
        )
        assert reply.status == 202, await reply.text()
        # Each job's request carries its callback, and so every event of the job will.
        assert [request.callback for request in broker.published] == [
            PUBLIC,
            PUBLIC + "?form",
            PUBLIC + "?multipart",
            PUBLIC + "?b",
            PUBLIC + "?b",
            PUBLIC + "?bm",
            PUBLIC + "?bm",
        ]
        assert all(request.owner == owner_of(b"alice") for request in broker.published)

    run(scenario)


def test_a_refused_callback_queues_nothing() -> None:
    async def scenario(client: Any, app: web.Application, broker: Broker) -> None:
        headers = {**ALICE, "Content-Type": "application/json"}
        cases: list[tuple[object, int, str]] = [
            ("http://10.0.0.1/hook", 422, "callback_refused"),
            ("http://[::1]:9/hook", 422, "callback_refused"),
            ("gopher://example.com/", 422, "callback_refused"),
            ("", 422, "callback_refused"),
            (42, 400, "malformed_request"),
            (None, 400, "malformed_request"),
            (["https://example.com/"], 400, "malformed_request"),
        ]
        for callback, status, code in cases:
            for path, body in (
                ("/classifications", {"model": MODEL, "image": "cat.jpg"}),
                ("/batches", {"model": MODEL, "images": ["cat.jpg"]}),
            ):
                reply = await client.post(
                    path, data=_json({**body, "callback_url": callback}), headers=headers
                )
                problem = await reply.json()
                assert (reply.status, problem["code"]) == (status, code), (callback, problem)
        # A batch names one callback.
        content_type, form = encode_multipart(
            {"model": MODEL, "callback_url": PUBLIC},
            [("callback_url", PUBLIC), ("image", "cat.jpg")],
        )
        reply = await client.post(
            "/batches", data=form, headers={**ALICE, "Content-Type": content_type}
        )
        assert reply.status == 400
        assert "one 'callback_url' per batch" in (await reply.json())["detail"]
        assert broker.published == []

    run(scenario)


def test_an_open_gateway_calls_back_only_with_its_own_secret() -> None:
    async def without(client: Any, app: web.Application, broker: Broker) -> None:
        body = {"model": MODEL, "image": "cat.jpg", "callback_url": PUBLIC}
        reply = await client.post(
            "/classifications", data=_json(body), headers={"Content-Type": "application/json"}
        )
        assert reply.status == 422
        assert "IMGQ_WEBHOOK_SECRET" in (await reply.json())["detail"]
        assert broker.published == []

    async def with_secret(client: Any, app: web.Application, broker: Broker) -> None:
        body = {"model": MODEL, "image": "cat.jpg", "callback_url": PUBLIC}
        reply = await client.post(
            "/classifications", data=_json(body), headers={"Content-Type": "application/json"}
        )
        assert reply.status == 202, await reply.text()
        assert [r.callback for r in broker.published] == [PUBLIC]

    run(without, IMGQ_API_TOKENS="")
    run(with_secret, IMGQ_API_TOKENS="", **SECRET_ENV)


def test_a_reused_result_with_a_callback_is_a_job_of_its_own() -> None:
    """A result answered from an earlier job is logged as a job of its own, final at once, and
    that job calls back; never the shortcut that answers with the earlier reuse itself."""

    async def scenario(client: Any, app: web.Application, broker: Broker) -> None:
        headers = {**ALICE, "Content-Type": "application/json"}
        plain = {"model": MODEL, "image": "cat.jpg"}

        async def submit(body: dict[str, Any]) -> Any:
            reply = await client.post("/classifications", data=_json(body), headers=headers)
            assert reply.status == 202, await reply.text()
            return await reply.json()

        first = await submit(plain)
        finish(app, first["job_id"])
        reused = await submit(plain)
        assert reused["reused_from"] == first["job_id"]
        again = await submit(plain)
        assert again["job_id"] == reused["job_id"]  # without a callback: the shortcut
        job = await submit({**plain, "callback_url": PUBLIC})
        assert job["job_id"] not in (first["job_id"], reused["job_id"])
        assert job["status"] == "succeeded"
        assert broker.events[-1].callback == PUBLIC
        assert broker.events[-1].job_id == job["job_id"]

    run(scenario)


def test_a_batch_with_a_callback_is_all_new_jobs_or_all_replayed() -> None:
    async def scenario(client: Any, app: web.Application, broker: Broker) -> None:
        def headers(key: str) -> dict[str, str]:
            return {**ALICE, "Content-Type": "application/json", "Idempotency-Key": key}

        first = {"model": MODEL, "images": ["cat.jpg"], "callback_url": PUBLIC}
        reply = await client.post("/batches", data=_json(first), headers=headers("k"))
        assert reply.status == 202
        # The same batch again (a retry): its jobs are the first's, with the first's callback.
        reply = await client.post("/batches", data=_json(first), headers=headers("k"))
        assert reply.status == 202
        assert len(broker.published) == 1
        # One more image under the same key: a replayed job and a new one.
        more = {**first, "images": ["cat.jpg", "coffee.jpg"]}
        reply = await client.post("/batches", data=_json(more), headers=headers("k"))
        problem = await reply.json()
        assert (reply.status, problem["code"]) == (422, "callback_refused")
        assert problem["detail"].startswith("images[0] is a job of an earlier request")
        assert len(broker.published) == 1
        # Without a callback, such a batch is as before.
        plain = {"model": MODEL, "images": ["cat.jpg", "coffee.jpg"]}
        reply = await client.post("/batches", data=_json(plain), headers=headers("k"))
        assert reply.status == 202

    run(scenario)
