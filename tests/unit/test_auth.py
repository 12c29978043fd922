"""gateway/auth.py at the byte level: an Authorization header that is not UTF-8 is a 401
problem, never a 500.  In-process, with the real middlewares and aiohttp's own parser; the
header goes out as raw bytes over a socket (no HTTP client would send them)."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.auth import token_matches, token_middleware
from gateway.problems import problem_middleware

TOKENS = ("t1", "tök")


async def _info(request: web.Request) -> web.Response:
    return web.json_response({"models": []})


async def _raw_get(port: int, authorization: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /info HTTP/1.1\r\nHost: imgq\r\nConnection: close\r\n"
        b"Authorization: " + authorization + b"\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def _answers(values: list[bytes]) -> list[tuple[int, bytes]]:
    app = web.Application(middlewares=[problem_middleware, token_middleware(TOKENS)])
    app.router.add_get("/info", _info)
    server = TestServer(app)
    await server.start_server()
    try:
        return [await _raw_get(server.port or 0, value) for value in values]
    finally:
        await server.close()


NOT_UTF8 = [
    b"Bearer \xff\xfe",
    b"Bearer t1\xe9",  # a right token with a Latin-1 byte after it
    b"Bearer t\xf6k",  # the second token, sent as Latin-1 rather than UTF-8
    b"\xff",
    b"B\xe9arer t1",
]


def test_an_authorization_header_that_is_not_utf8_is_401() -> None:
    answers = asyncio.run(_answers(NOT_UTF8))
    for value, (status, body) in zip(NOT_UTF8, answers, strict=True):
        assert status == 401, (value, status, body)
        assert json.loads(body)["code"] == "unauthorized"


def test_right_tokens_still_pass_byte_for_byte() -> None:
    answers = asyncio.run(_answers([b"Bearer t1", "Bearer tök".encode()]))
    assert [status for status, _ in answers] == [200, 200]


@pytest.mark.parametrize("header", ["Bearer \udcff\udcfe", "Bearer t1\udce9", "\udcff"])
def test_token_matches_takes_undecodable_bytes(header: str) -> None:
    # What aiohttp hands over for such bytes: lone surrogates (UTF-8, surrogateescape).
    assert not token_matches(header, tuple(t.encode() for t in TOKENS))
