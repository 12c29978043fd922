"""Security headers on every response: what the page may load, who may frame it, what leaks.

Set from ``on_response_prepare`` rather than a middleware: that signal runs for every
response just before its headers are sent, including the event stream (prepared inside its
handler, so a middleware would see it too late), file responses and problem responses.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

# The page (gateway/static) is same-origin files only: module scripts and one stylesheet, no
# inline script or style, no CDN.  Images are the gallery, data: icons in the CSS and the
# blob: preview of an upload; fetch and the event stream go to this origin.  The API's own
# answers are never documents, so the one policy serves both.
CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        # Nothing may frame the page (clickjacking); X-Frame-Options says it to old browsers.
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # Every response declares its type; a browser must not guess another (e.g. run JSON as HTML).
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Page URLs carry job IDs (/?job=<id>), which are as good as the job: never send them on.
    "Referrer-Policy": "no-referrer",
}


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
