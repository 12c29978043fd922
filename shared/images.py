"""What the gateway and the replicas agree on about image bytes, defined once for both.

Which of Pillow's decoders may ever see bytes from outside (the gateway checks uploads with
them; a replica decodes with the same ones, since an AMQP producer can send anything), what
each one is called and served as, and when a picture costs too much to decode at all: a JPEG
with too many scans, or any picture whose decoded pixels would take too much memory.

No Pillow import: the scan count reads the bytes before any decoder does, and the decoded size
is worked out from the header's size and mode alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# Pillow's decoders, by the name ``Image.open(formats=...)`` takes.  Pillow's JPEG opener also
# opens MPO files (a phone's JPEG with an MPF block and maybe more frames after the first),
# which it then reports as "MPO".
DECODERS: Final = ("JPEG", "PNG", "WEBP")

# ``Image.format`` -> media type.  An MPO file is a JPEG to everything that reads it (browsers
# show its first frame, which is what a replica classifies), so it is served as one.
MEDIA_TYPES: Final = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
}

# What Pillow calls the JPEGs it opens: the scan limit below applies to both.
JPEG_FORMATS: Final = frozenset({"JPEG", "MPO"})

# The names people know the decoders by, for messages.
FORMAT_NAMES: Final = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP"}

# Scans (SOS segments) in one JPEG.  A baseline JPEG has 1 (3 when its colour planes are
# stored apart), a progressive one about 10 (libjpeg's default script has 10, mozjpeg's a few
# more).  Each scan makes the decoder pass over the whole image again, so a few KiB of
# progressive JPEG with thousands of empty scans takes seconds to minutes to decode: in the
# gateway's check and again in each replica that takes the job.  Nothing but such a bomb
# needs more than 100.
MAX_JPEG_SCANS: Final = 100

# Marker segments in one JPEG, restart markers aside: a photo has a few dozen (tables, a header
# per scan, EXIF), one with a large ICC profile (split in up to 255 pieces) or at the scan limit
# a few hundred.  The bound is on counting the scans, which walks the segments one by one in
# Python (a few microseconds each): a 10 MiB file of nothing but empty segments would take
# seconds to walk, while a decoder skips them in milliseconds.
MAX_JPEG_SEGMENTS: Final = 2_000

# Memory a replica needs to decode a picture and make it RGB, per pixel, by Pillow's mode
# (measured with Pillow 13 at 4 and 16 megapixels; the slope, rounded up).  Pillow keeps 1 byte
# a pixel for 1, L and P, 2 for 16-bit greyscale and 4 for every other mode (RGB too, as RGBX);
# a picture that is not RGB is then copied into RGB (4 more), and 16-bit greyscale is scaled
# to 8 bits through arrays of its own.  A mode not listed here costs the most of any.
BYTES_PER_PIXEL: Final = {
    "RGB": 4,
    "1": 5,
    "L": 5,
    "P": 5,
    "LA": 8,
    "La": 8,
    "PA": 8,
    "RGBA": 8,
    "RGBa": 8,
    "RGBX": 8,
    "CMYK": 8,
    "YCbCr": 8,
    "I;16": 14,
    "I;16B": 14,
    "I;16L": 14,
    "I;16N": 14,
}
_MOST_BYTES_PER_PIXEL: Final = 16
# Pillow's WebP decoder holds libwebp's RGBA buffer and a copy of it beside the picture, so a
# WebP costs this much a pixel whatever its mode.
WEBP_BYTES_PER_PIXEL: Final = 16

# Decoded bytes one picture may need (pixels x BYTES_PER_PIXEL).  The pixel limits (40 MP on
# the gateway, 64 MP on a replica) alone let a few KiB of 16-bit PNG need about 1 GB on a
# replica; 256 MiB still takes a 40 MP RGB photo (160 MB) and keeps a replica (about 200 MB
# with its models) inside a 1 GiB container with room to spare.  The gateway refuses the same
# pictures first, by the same rule, and never decodes more than this in a check either.
MAX_DECODED_BYTES: Final = 256 * 1024 * 1024
MAX_DECODED_TEXT: Final = "256 MiB"

_SOI = b"\xff\xd8"
_SOS = 0xDA
_EOI = 0xD9
# The next marker, found as libjpeg finds it: any bytes that are not 0xFF are skipped (junk
# between segments), then fill bytes (a run of 0xFF), then a byte that is not 0x00 (0xFF00 is a
# stuffed 0xFF inside entropy-coded data) and not a restart marker RSTn (0xD0-0xD7) nor TEM
# (0x01), which have no length and sit inside or between scans without starting anything.
# Written with a literal first byte so that re searches for it at memchr speed (about 1 ms per
# MiB of entropy-coded data; "\xff+" is 20 times slower).
_NEXT_MARKER = re.compile(rb"\xff\xff*([^\x00\x01\xd0-\xd7\xff])")


@dataclass(frozen=True, slots=True)
class JpegLayout:
    scans: int  # SOS segments
    segments: int  # marker segments with a length, SOS included
    complete: bool  # False: the walk stopped past MAX_JPEG_SEGMENTS, so both are lower bounds


def jpeg_layout(data: bytes) -> JpegLayout:
    """The scans and segments of the first image in JPEG bytes (none for bytes that are not one).

    Walks the marker segments as a decoder does, skipping each segment by its length, so bytes
    that look like a scan marker inside a payload (an EXIF thumbnail, an ICC profile) do not
    count; entropy-coded data is skipped by searching for the next real marker.  Stops at the
    first end-of-image (an MPO's later frames are never decoded), at bytes that no decoder
    would read further, or past MAX_JPEG_SEGMENTS segments.
    """
    scans = segments = 0
    if not data.startswith(_SOI):
        return JpegLayout(0, 0, complete=True)
    pos = len(_SOI)
    while True:
        found = _NEXT_MARKER.search(data, pos)
        if found is None:
            break
        marker = data[found.start(1)]
        if marker in (_EOI, _SOI[1]):  # the end; a second start-of-image is an error
            break
        pos = found.end()
        if pos + 2 > len(data):
            break
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2:  # libjpeg stops with an error here
            break
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            return JpegLayout(scans, segments, complete=False)
        if marker == _SOS:
            scans += 1
        pos += length
    return JpegLayout(scans, segments, complete=True)


def jpeg_refusal(data: bytes) -> str | None:
    """Why these bytes must not be decoded (scans or segments past the limits), or None.

    About 1 ms per MiB of JPEG, against 50-100 ms per MiB to decode one.
    """
    layout = jpeg_layout(data)
    if layout.scans > MAX_JPEG_SCANS:
        counted = f"{layout.scans:,}" if layout.complete else f"at least {layout.scans:,}"
        return (
            f"the JPEG has {counted} scans; the limit is {MAX_JPEG_SCANS} (a photo has 1 to "
            "about 10, and each one costs the decoder a pass over the whole image)"
        )
    if not layout.complete:
        return (
            f"the JPEG has more than {MAX_JPEG_SEGMENTS:,} marker segments; a photo has a few dozen"
        )
    return None


def decoded_bytes(width: int, height: int, mode: str, kind: str | None = None) -> int:
    """The memory a replica needs to decode a ``width`` x ``height`` picture of Pillow mode
    ``mode`` (in format ``kind``, Pillow's name) and make it RGB: pixels x bytes per pixel."""
    if kind == "WEBP":
        per_pixel = WEBP_BYTES_PER_PIXEL
    else:
        per_pixel = BYTES_PER_PIXEL.get(mode, _MOST_BYTES_PER_PIXEL)
    return width * height * per_pixel


def decoded_refusal(width: int, height: int, mode: str, kind: str | None = None) -> str | None:
    """Why a picture of this size and mode must not be decoded (too many decoded bytes), or
    None.  Judged on the header, before anything is decoded, alike by the gateway and the
    replicas (a JPEG by its full size, although replicas decode it at a reduced scale)."""
    needed = decoded_bytes(width, height, mode, kind)
    if needed <= MAX_DECODED_BYTES:
        return None
    shown = f"{FORMAT_NAMES.get(kind, kind)}, " if kind else ""
    return (
        f"the image ({shown}{width}x{height}, mode {mode}) would take {needed / 2**20:,.0f} MiB "
        f"to decode; the limit is {MAX_DECODED_TEXT} ({MAX_DECODED_BYTES:,} bytes) of "
        "decoded pixels"
    )
