"""What the gateway and the replicas agree on about image bytes, defined once for both.

Which of Pillow's decoders may ever see bytes from outside (the gateway checks uploads with
them; a replica decodes with the same ones, since an AMQP producer can send anything), what
each one is called and served as, and when a JPEG costs too much to decode at all.

No Pillow import: the scan count reads the bytes before any decoder does.
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
