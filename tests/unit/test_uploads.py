"""Uploads: the checks of gateway/uploads.py that keep bad bytes out, on their own (POST
/classifications with a file, and its limits, on the session's real broker, gateway and
replicas: tests/service/test_uploads.py)."""

from __future__ import annotations

import time

import pytest

from gateway.uploads import check_image, display_name
from shared.errors import ImageTooLarge, ImageUnreadable, UnsupportedMediaType
from shared.images import MAX_DECODED_TEXT, MAX_JPEG_SCANS
from tests.odd_images import scan_bomb
from tests.upload_images import COFFEE, deep_png, encode, huge_png, phone_jpeg


def test_check_image_names_the_media_type() -> None:
    assert check_image(COFFEE) == "image/jpeg"
    assert check_image(encode("PNG")) == "image/png"
    assert check_image(encode("WEBP")) == "image/webp"
    # A phone's MPO is a JPEG to every viewer.
    assert check_image(phone_jpeg()) == "image/jpeg"


def test_check_image_counts_a_jpegs_scans_before_decoding_it() -> None:
    bomb = scan_bomb(500)
    started = time.perf_counter()
    with pytest.raises(ImageUnreadable, match=r"500 scans; the limit is 100 \("):
        check_image(bomb)
    # Decoding it, even at 1/8 scale, takes about half a second here.
    assert time.perf_counter() - started < 0.25
    assert check_image(scan_bomb(MAX_JPEG_SCANS, size=(64, 64))) == "image/jpeg"


def test_check_image_refusals() -> None:
    with pytest.raises(UnsupportedMediaType, match="JPEG, PNG, WebP"):
        check_image(encode("GIF"))
    with pytest.raises(UnsupportedMediaType):
        check_image(b"%PDF-1.7 not an image")
    with pytest.raises(ImageTooLarge, match="9000x9000"):
        check_image(huge_png())
    with pytest.raises(
        ImageTooLarge, match=f"would take 270 MiB .* the limit is {MAX_DECODED_TEXT}"
    ):
        check_image(deep_png())
    with pytest.raises(ImageUnreadable):
        check_image(COFFEE[:2000])
    with pytest.raises(ImageUnreadable):
        check_image(encode("PNG")[:16])
    with pytest.raises(ImageUnreadable, match="starts like a WebP"):
        check_image(encode("WEBP")[:12])
    corrupt = bytearray(encode("PNG"))
    corrupt[len(corrupt) // 2] ^= 0xFF  # a CRC no longer matches
    with pytest.raises(ImageUnreadable):
        check_image(bytes(corrupt))


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("cat.jpg", "cat.jpg"),
        ("../../etc/passwd", "passwd"),
        ("C:\\photos\\cat.jpg", "cat.jpg"),
        ("tab\there\nand\x00nul.png", "tabhereandnul.png"),
        ("evil\u202egpj.exe", "evilgpj.exe"),
        ("  spaced.jpg  ", "spaced.jpg"),
        ("", "image"),
        (None, "image"),
        ("..", "image"),
        ("dir/", "image"),
        ("café ☕.webp", "café ☕.webp"),
    ],
)
def test_display_name(raw: str | None, shown: str) -> None:
    assert display_name(raw) == shown


def test_display_name_is_capped_keeping_the_extension() -> None:
    name = display_name("a" * 500 + ".jpeg")
    assert len(name) == 100
    assert name.endswith("….jpeg")
