"""Driving Debian's chromium for the page tests (Playwright, never its own browser build)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox: CI runs as root in a container.  The rest keeps chromium from calling home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO_ROOT = Path(__file__).resolve().parents[1]
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
# Generous: the first job on a fresh replica may wait for the model to load.
RESULT_TIMEOUT_MS = 60_000


def require_chromium() -> None:
    """Skip the calling test module, saying why, where Debian's chromium is absent."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} not found: the page tests drive Debian's chromium "
            "(apt-get install chromium); CI installs it",
            allow_module_level=True,
        )


def artifacts_dir() -> Path:
    raw = os.environ.get("IMGQ_TEST_ARTIFACTS")
    path = Path(raw) if raw else REPO_ROOT / "tests" / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@contextmanager
def launch_browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextmanager
def new_page(
    browser: Browser, base_url: str, viewport: dict[str, int] | None = None
) -> Iterator[Page]:
    """A page in a fresh context (empty localStorage); fails if the page's script throws."""
    context = browser.new_context(base_url=base_url, viewport=viewport or DESKTOP)
    page = context.new_page()
    page.set_default_timeout(15_000)
    script_errors: list[str] = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))
    yield page
    context.close()
    assert script_errors == [], f"uncaught exceptions in the page: {script_errors}"


def open_page(page: Page) -> dict[str, Any]:
    """Load the page and wait until it has rendered GET /info; returns that /info answer."""
    with page.expect_response(lambda r: r.url.endswith("/info")) as answer:
        page.goto("/")
    assert answer.value.status == 200
    info: dict[str, Any] = answer.value.json()
    first = info["models"][0]["name"]
    expect(page.locator(f'#model-select option[value="{first}"]')).to_have_text(
        re.compile(r"\b(online|offline)\b")
    )
    return info


def is_post_to_classifications(response: Any) -> bool:
    return response.request.method == "POST" and response.url.endswith("/classifications")
