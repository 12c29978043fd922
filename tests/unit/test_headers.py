"""gateway/headers.py: the page's content security policy allows this origin only and no inline
code, and the page has no inline script or style (every response's headers on the running
service: tests/service/test_headers.py; the page under the policy in a real browser:
tests/browser/test_headers.py)."""

from __future__ import annotations

import re

from gateway.headers import CONTENT_SECURITY_POLICY
from tests.conftest import REPO


def _directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for directive in policy.split(";"):
        name, *sources = directive.split()
        parsed[name] = sources
    return parsed


def test_the_policy_allows_this_origin_only_and_no_inline_code() -> None:
    policy = _directives(CONTENT_SECURITY_POLICY)
    assert policy["default-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["base-uri"] == ["'none'"]
    for sources in policy.values():
        assert not {"'unsafe-inline'", "'unsafe-eval'", "*", "http:", "https:"} & set(sources)


def test_the_page_has_no_inline_script_or_style() -> None:
    """What the policy forbids must not be in the page: no <script> body, no <style>, no
    style="" or on*="" attribute, nothing from another origin."""
    for html in (REPO / "gateway" / "static").glob("*.html"):
        text = html.read_text(encoding="utf-8")
        assert not re.search(r"<script\b[^>]*>\s*[^<\s]", text), html.name
        assert "<style" not in text, html.name
        assert not re.search(r"\sstyle\s*=", text), html.name
        assert not re.search(r"\son[a-z]+\s*=", text), html.name
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), html.name
