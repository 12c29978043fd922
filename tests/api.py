"""A small synchronous HTTP client for the tests (stdlib only, so it cannot hide gateway bugs)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    base_url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Reply:
    req = urllib.request.Request(base_url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return Reply(response.status, _lower(response.headers.items()), response.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, _lower(exc.headers.items()), exc.read())


def _lower(items: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in items}


def get(base_url: str, path: str, timeout: float = 60.0) -> Reply:
    return request(base_url, "GET", path, timeout=timeout)


def post_json(
    base_url: str, path: str, payload: Any, headers: dict[str, str] | None = None
) -> Reply:
    return request(
        base_url,
        "POST",
        path,
        json.dumps(payload).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


def submit(
    base_url: str, model: str, image: str, *, reuse: bool = False, key: str | None = None
) -> dict[str, Any]:
    """Submit a gallery job; by default it is really classified (no result reuse)."""
    headers = {} if reuse else {"Cache-Control": "no-cache"}
    if key is not None:
        headers["Idempotency-Key"] = key
    reply = post_json(base_url, "/classifications", {"model": model, "image": image}, headers)
    assert reply.status == 202, (reply.status, reply.body)
    job: dict[str, Any] = reply.json()
    return job


def wait_final(base_url: str, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
    """Long-poll until the job is final."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = get(base_url, f"/classifications/{job_id}?wait=30")
        assert reply.status == 200, (reply.status, reply.body)
        job: dict[str, Any] = reply.json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
    raise AssertionError(f"job {job_id} not final after {timeout} s")


def wait_long_polls(base_url: str, count: int, timeout: float = 60.0) -> None:
    """Until the gateway holds at least ``count`` long-polls or event streams (its
    ``imgq_long_polls_waiting`` gauge): what a test waits on before acting on held requests,
    instead of sleeping for however long opening them takes on this machine."""
    deadline = time.monotonic() + timeout
    held = 0.0
    while time.monotonic() < deadline:
        for line in get(base_url, "/metrics").body.decode().splitlines():
            if line.startswith("imgq_long_polls_waiting "):
                held = float(line.split()[1])
        if held >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the gateway holds {held:g} long-polls after {timeout:g} s, not {count}")
