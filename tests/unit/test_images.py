"""shared/images.py: the JPEG scan count both sides refuse decode bombs by."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from shared.images import (
    DECODERS,
    MAX_DECODED_BYTES,
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MEDIA_TYPES,
    JpegLayout,
    decoded_bytes,
    decoded_refusal,
    jpeg_layout,
    jpeg_refusal,
)
from tests.api import REPO
from tests.odd_images import after_soi, encode, mpo, scan_bomb, segment

COFFEE = Image.open(REPO / "images" / "coffee.jpg").convert("RGB")


def _noise(size: tuple[int, int] = (320, 240)) -> Image.Image:
    """Random pixels: their entropy-coded data is full of stuffed 0xFF bytes (FF 00)."""
    pixels = np.random.default_rng(7).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_every_decoder_has_a_media_type() -> None:
    assert set(DECODERS) <= set(MEDIA_TYPES)
    assert MEDIA_TYPES["MPO"] == "image/jpeg"


@pytest.mark.parametrize(
    ("make", "scans"),
    [
        (lambda: encode(COFFEE), 1),
        (lambda: encode(COFFEE.convert("L")), 1),
        # Pillow's (libjpeg's) progressive script: 10 scans for colour, 6 for greyscale.
        (lambda: encode(COFFEE, progressive=True), 10),
        (lambda: encode(COFFEE.convert("L"), progressive=True), 6),
        (lambda: encode(_noise(), quality=100), 1),
        (lambda: encode(_noise(), progressive=True, quality=100), 10),
        # Restart markers (FF D0-D7) inside the entropy-coded data, after every block.
        (lambda: encode(_noise(), restart_marker_blocks=1), 1),
        (lambda: encode(_noise(), progressive=True, restart_marker_blocks=1), 10),
    ],
)
def test_real_jpegs_have_few_scans(make: Callable[[], bytes], scans: int) -> None:
    data = make()
    layout = jpeg_layout(data)
    assert layout.scans == scans
    assert layout.complete
    assert layout.segments < 30
    assert jpeg_refusal(data) is None


def test_a_scan_marker_inside_a_payload_does_not_count() -> None:
    # EXIF thumbnails and ICC profiles are arbitrary bytes inside APPn segments; so is a comment.
    payload = b"\xff\xda\x00\x08" * 300
    data = after_soi(encode(COFFEE), segment(0xE1, payload), segment(0xFE, payload))
    assert data.count(b"\xff\xda") == 601
    assert jpeg_layout(data).scans == 1
    assert jpeg_refusal(data) is None
    with Image.open(io.BytesIO(data)) as image:  # still a JPEG Pillow decodes
        image.load()


def test_fill_bytes_and_junk_between_segments_are_read_as_a_decoder_reads_them() -> None:
    progressive = encode(COFFEE, progressive=True)
    # Any number of 0xFF may precede a marker ...
    filled = progressive.replace(b"\xff\xda", b"\xff\xff\xff\xda")
    assert jpeg_layout(filled).scans == 10
    # ... and libjpeg skips bytes that are not a marker at all (with a warning), so junk
    # before a scan must not hide it from the count.
    junk = progressive.replace(b"\xff\xda", b"junk\xff\xda")
    assert jpeg_layout(junk).scans == 10


def test_only_the_first_frame_of_an_mpo_counts() -> None:
    # Pillow decodes an MPO's first frame, which ends at its own end-of-image marker.
    data = mpo(COFFEE, COFFEE.rotate(90))
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert data.count(b"\xff\xda") == 2
    assert jpeg_layout(data).scans == 1


@pytest.mark.parametrize(
    "data",
    [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00"],
)
def test_bytes_that_are_not_a_whole_jpeg_have_no_scans(data: bytes) -> None:
    assert jpeg_layout(data) == JpegLayout(0, 0, complete=True)
    assert jpeg_refusal(data) is None


def test_a_cut_jpeg_is_counted_as_far_as_it_goes() -> None:
    data = encode(COFFEE, progressive=True)
    cut = data[: len(data) // 2]
    assert 0 < jpeg_layout(cut).scans < 10
    # A length that points past the end, or one too small to count itself, ends the walk.
    assert jpeg_layout(b"\xff\xd8\xff\xfe\x00\x40\xff\xda\x00\x08").scans == 0
    assert jpeg_layout(b"\xff\xd8\xff\xda\x00\x01\xff\xda\x00\x08").scans == 0


def test_a_scan_bomb_is_refused_with_its_count_and_the_limit() -> None:
    bomb = scan_bomb(500)
    assert len(bomb) < 64 * 1024
    assert jpeg_layout(bomb) == JpegLayout(500, jpeg_layout(bomb).segments, complete=True)
    message = jpeg_refusal(bomb)
    assert message is not None
    assert "500 scans" in message
    assert f"the limit is {MAX_JPEG_SCANS}" in message
    assert jpeg_refusal(scan_bomb(MAX_JPEG_SCANS)) is None


def test_refusing_a_scan_bomb_costs_a_fraction_of_decoding_it(
    figure: Callable[[str], None],
) -> None:
    bomb = scan_bomb(500)
    started = time.perf_counter()
    assert jpeg_refusal(bomb) is not None
    refused = time.perf_counter() - started
    started = time.perf_counter()
    with Image.open(io.BytesIO(bomb)) as image:
        image.draft("RGB", (256, 256))
        image.load()
    decoded = time.perf_counter() - started
    figure(
        f"a 2000x2000 progressive JPEG with 500 empty scans ({len(bomb) / 1024:.0f} KiB): "
        f"refused in {refused * 1000:.1f} ms, decoding it takes {decoded * 1000:.0f} ms"
    )
    assert refused < decoded / 10


def test_a_flood_of_empty_segments_is_refused_without_walking_all_of_it() -> None:
    # 10 MiB of 4-byte comment segments would take seconds to walk in Python.
    flood = b"\xff\xd8" + b"\xff\xfe\x00\x02" * (10 * 1024 * 1024 // 4) + b"\xff\xd9"
    started = time.perf_counter()
    layout = jpeg_layout(flood)
    message = jpeg_refusal(flood)
    assert time.perf_counter() - started < 1.0
    assert not layout.complete
    assert layout.segments == MAX_JPEG_SEGMENTS + 1
    assert message is not None
    assert f"more than {MAX_JPEG_SEGMENTS:,} marker segments" in message


def test_a_bomb_with_more_scans_than_the_walk_goes_says_at_least() -> None:
    bomb = scan_bomb(MAX_JPEG_SEGMENTS + 100, size=(64, 64))
    layout = jpeg_layout(bomb)
    assert not layout.complete
    message = jpeg_refusal(bomb)
    assert message is not None
    assert f"at least {layout.scans:,} scans" in message


def test_decoded_bytes_are_the_pixels_times_the_bytes_of_their_mode() -> None:
    assert decoded_bytes(1000, 1000, "RGB", "JPEG") == 4_000_000
    assert decoded_bytes(1000, 1000, "L", "PNG") == 5_000_000  # greyscale, then its RGB copy
    assert decoded_bytes(1000, 1000, "RGBA", "PNG") == 8_000_000
    assert decoded_bytes(1000, 1000, "I;16", "PNG") == 14_000_000  # scaled to 8 bits first
    # Pillow's WebP decoder holds two more copies of the picture, whatever its mode.
    assert decoded_bytes(1000, 1000, "RGB", "WEBP") == 16_000_000
    # A mode no accepted decoder gives today costs the most.
    assert decoded_bytes(10, 10, "F") == 1_600


def test_the_decoded_size_refuses_what_the_pixel_limits_let_through() -> None:
    # A 40-megapixel RGB photo (the gateway's pixel limit) still decodes.
    assert decoded_refusal(7746, 5164, "RGB", "JPEG") is None
    assert decoded_bytes(8192, 8192, "RGB", "PNG") < MAX_DECODED_BYTES * 1.01
    # 64 megapixels of 16-bit greyscale (a replica's pixel limit) would take about 1 GB.
    refusal = decoded_refusal(8000, 8000, "I;16", "PNG")
    assert refusal is not None
    assert "(PNG, 8000x8000, mode I;16) would take 854 MiB to decode" in refusal
    assert "the limit is 256 MiB (268,435,456 bytes)" in refusal
    assert decoded_refusal(5000, 4000, "RGB", "WEBP") is not None  # 20 MP WebP: 305 MiB
