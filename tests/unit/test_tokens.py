"""IMGQ_API_TOKENS: how a request's Authorization header is matched against the tokens (the
JSON API asking for one on a real gateway: tests/service/test_tokens.py)."""

from __future__ import annotations

from gateway.auth import token_matches


def test_token_matching() -> None:
    tokens = (b"t1", b"s3cr\xc3\xa9t")
    assert token_matches("Bearer t1", tokens)
    assert token_matches("bearer   t1 ", tokens)
    assert token_matches("Bearer s3crét", tokens)  # not ASCII: compared as bytes, no TypeError
    for header in (None, "", "Bearer", "Bearer ", "t1", "Basic t1", "Bearer t2", "Bearer t1x"):
        assert not token_matches(header, tokens), header
    assert not token_matches("Bearer t1", ())
