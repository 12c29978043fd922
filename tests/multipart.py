"""Build multipart/form-data bodies for the tests (stdlib only, like tests/api.py)."""

from __future__ import annotations

import uuid
from typing import Any

from tests import api


def encode(
    fields: dict[str, str], files: dict[str, tuple[str, bytes, str]] | None = None
) -> tuple[bytes, str]:
    """``files``: field name -> (filename, bytes, the Content-Type the client claims)."""
    boundary = f"imgq-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, (filename, data, content_type) in (files or {}).items():
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        parts.append(head.encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post_form(
    base_url: str,
    fields: dict[str, str],
    files: dict[str, tuple[str, bytes, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> api.Reply:
    body, content_type = encode(fields, files)
    return api.request(
        base_url,
        "POST",
        "/classifications",
        body,
        {"Content-Type": content_type, **(headers or {})},
    )


def upload(
    base_url: str,
    model: str,
    filename: str,
    data: bytes,
    *,
    content_type: str = "application/octet-stream",
    reuse: bool = False,
    headers: dict[str, str] | None = None,
) -> api.Reply:
    """POST an image file as a browser would; by default it is really classified (no reuse)."""
    extra = {} if reuse else {"Cache-Control": "no-cache"}
    return post_form(
        base_url,
        {"model": model},
        {"file": (filename, data, content_type)},
        {**extra, **(headers or {})},
    )


def accepted(reply: api.Reply) -> dict[str, Any]:
    assert reply.status == 202, (reply.status, reply.body[:500])
    job: dict[str, Any] = reply.json()
    return job
