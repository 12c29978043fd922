"""The page with the person's own image: drop or pick a file, preview, upload, and rejections."""

from __future__ import annotations

import base64
import io
import re

import pytest
from PIL import Image
from playwright.sync_api import Page, Response, expect

from tests.chromium import (
    JOB_ID,
    REPO_ROOT,
    RESULT_TIMEOUT_MS,
    artifacts_dir,
    is_post_to_classifications,
    open_page,
    require_chromium,
)

require_chromium()

# A File in a DataTransfer, as the browser hands a dropped file to the page.
DROP_FILE_JS = """([data, name, type]) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, { type }));
    return transfer;
}"""


def coffee_png() -> bytes:
    """The gallery's coffee photo as a PNG: other bytes than any gallery image, same content."""
    out = io.BytesIO()
    with Image.open(REPO_ROOT / "images" / "coffee.jpg") as image:
        image.convert("RGB").save(out, "PNG")
    return out.getvalue()


def drop_file(page: Page, data: bytes, name: str, content_type: str) -> None:
    transfer = page.evaluate_handle(
        DROP_FILE_JS, [base64.b64encode(data).decode(), name, content_type]
    )
    page.dispatch_event("#drop-zone", "dragenter", {"dataTransfer": transfer})
    expect(page.locator("#drop-zone")).to_have_class(re.compile(r"\bdragging\b"))
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})


@pytest.mark.timeout(120)
def test_dropped_png_is_previewed_uploaded_and_classified(page: Page) -> None:
    open_page(page)
    expect(page.locator("#upload-limits")).to_have_text(
        re.compile(r"JPEG, PNG or WebP.*10 MiB.*40 megapixels")
    )

    png = coffee_png()
    drop_file(page, png, "my coffee.png", "image/png")
    expect(page.locator("#drop-zone")).not_to_have_class(re.compile(r"\bdragging\b"))

    # The preview shows the file itself (an object URL), and no gallery image is chosen.
    preview = page.locator("#preview-image")
    expect(preview).to_have_attribute("src", re.compile(r"^blob:"))
    page.wait_for_function("() => document.querySelector('#preview-image').naturalWidth > 0")
    expect(page.locator("#preview-caption")).to_contain_text("my coffee.png")
    expect(page.locator('#gallery input[name="image"]:checked')).to_have_count(0)
    expect(page.locator("#upload-error")).to_be_hidden()

    page.select_option("#model-select", "efficientnet_lite0")
    page.check("#no-cache")
    with page.expect_response(is_post_to_classifications) as posted:
        page.click("#submit-button")
    answer: Response = posted.value
    assert answer.status == 202, answer.text()
    request = answer.request
    assert (request.header_value("content-type") or "").startswith("multipart/form-data")
    # (Playwright does not show a body holding a File, so the answer tells what arrived.)
    job = answer.json()
    assert JOB_ID.match(job["job_id"])
    assert job["model"] == "efficientnet_lite0"
    assert job["image"].startswith("upload:"), job
    assert "coffee" in job["image"], job  # the file's name, made safe by the gateway

    expect(page.locator("#job-id")).to_have_text(job["job_id"])
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=RESULT_TIMEOUT_MS)
    rows = page.locator("#result-chart .bar-row")
    expect(rows).to_have_count(5)
    expect(rows.first).to_have_attribute("data-label", "espresso")
    expect(page.locator("#job-subject")).to_contain_text("(your file)")
    expect(page.locator("#error-message")).to_be_hidden()
    page.screenshot(path=str(artifacts_dir() / "page-upload.png"), full_page=True)

    # Back to the gallery in one click.
    page.click("#upload-clear")
    expect(preview).to_have_attribute("src", re.compile(r"/images/"))
    expect(page.locator('#gallery input[name="image"]:checked')).to_have_count(1)


@pytest.mark.timeout(120)
def test_rejected_uploads_say_why(page: Page) -> None:
    posts: list[str] = []
    page.on(
        "request",
        lambda r: (
            posts.append(r.url) if r.method == "POST" and "/classifications" in r.url else None
        ),
    )
    open_page(page)
    upload_error = page.locator("#upload-error")

    # Refused in the page already: a GIF, and a file over the 10 MiB limit.
    page.set_input_files(
        "#file-input",
        files=[{"name": "anim.gif", "mimeType": "image/gif", "buffer": b"GIF89a" + bytes(64)}],
    )
    expect(upload_error).to_be_visible()
    expect(upload_error).to_contain_text("anim.gif")
    expect(upload_error).to_contain_text("JPEG, PNG and WebP")
    too_big = b"\xff\xd8\xff\xe0" + bytes(10 * 1024 * 1024)
    page.set_input_files(
        "#file-input", files=[{"name": "huge.jpg", "mimeType": "image/jpeg", "buffer": too_big}]
    )
    expect(upload_error).to_contain_text("huge.jpg")
    expect(upload_error).to_contain_text("10 MiB")
    assert posts == []
    # Neither replaced the gallery choice.
    expect(page.locator("#preview-image")).to_have_attribute("src", re.compile(r"/images/"))

    # Text that claims to be a PNG passes the page's check; the gateway sniffs the bytes and
    # answers 415, whose detail the page shows as it is.
    page.set_input_files(
        "#file-input",
        files=[
            {"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image at all\n" * 50}
        ],
    )
    expect(upload_error).to_be_hidden()
    expect(page.locator("#preview-caption")).to_contain_text("notes.png")
    expect(page.locator("#preview-note")).to_contain_text("cannot show a preview")
    with page.expect_response(is_post_to_classifications) as posted:
        page.click("#submit-button")
    assert posted.value.status == 415, posted.value.text()
    problem = posted.value.json()
    assert problem["code"] == "unsupported_media_type", problem

    error = page.locator("#error-message")
    expect(error).to_be_visible()
    expect(error).to_contain_text(problem["detail"])
    expect(page.locator("#job-id")).to_be_empty()
    expect(page.locator("#result-chart .bar-row")).to_have_count(0)
    page.screenshot(path=str(artifacts_dir() / "page-upload-rejected.png"), full_page=True)
