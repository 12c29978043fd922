"""An uploaded image: its display name, and the checks that keep bad bytes out.

The image's format is sniffed from its bytes by Pillow (restricted to the decoders the
replicas use, ``shared/images.py``, so no other decoder ever sees client bytes); the filename
and the part's Content-Type are only the client's claims and are used for display at most.
Before anything is decoded, the picture's size and mode say what decoding it would take
(pixels, decoded bytes), and a JPEG's scans are counted: a few KiB with thousands of them
would take minutes.  The bytes stay in memory until the job is published, and are never
written to disk; ``gateway/intake.py`` reads them from the request.
"""

from __future__ import annotations

import io
import struct
import unicodedata
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from gateway.limits import MAX_FILENAME_CHARS, MAX_PIXELS, UPLOAD_FORMATS
from shared.errors import ImageTooLarge, ImageUnreadable, UnsupportedMediaType
from shared.images import DECODERS, FORMAT_NAMES, JPEG_FORMATS, decoded_refusal, jpeg_refusal

# Where a name has no usable characters left after sanitising.
_UNNAMED = "image"


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str  # sanitised, for display only
    data: bytes


def display_name(raw: str | None) -> str:
    """The client's filename made safe to show: last path segment, no control or formatting
    characters (a right-to-left override can make 'gpj.exe' read as 'exe.jpg'), capped."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C")).strip()
    if name in ("", ".", ".."):
        return _UNNAMED
    if len(name) > MAX_FILENAME_CHARS:
        _, dot, ext = name.rpartition(".")
        keep = f"{dot}{ext}" if dot and len(ext) <= 10 else ""
        name = name[: MAX_FILENAME_CHARS - len(keep) - 1].rstrip() + "…" + keep
    return name


def check_image(data: bytes) -> str:
    """The upload's media type, once its bytes are known to be an accepted image that decodes.

    CPU-bound (up to a second for a 40 MP image): run it off the event loop, as
    ``gateway/checks.py`` does.
    """
    allowed = ", ".join(FORMAT_NAMES.values())
    try:
        with Image.open(io.BytesIO(data), formats=DECODERS) as image:
            kind = image.format or ""
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageTooLarge(
                    f"the image is {width}x{height} = {width * height:,} pixels; "
                    f"the limit is {MAX_PIXELS:,}"
                )
            # As a replica judges it (shared/images.py), before this check decodes anything.
            if refusal := decoded_refusal(width, height, image.mode, kind):
                raise ImageTooLarge(refusal)
            if kind in JPEG_FORMATS:
                if refusal := jpeg_refusal(data):
                    raise ImageUnreadable(refusal)
                # Decoding at 1/8 scale reads every byte of the scan for a fraction of the work.
                image.draft("RGB", (1, 1))
                image.load()
            elif kind == "PNG":
                # Checks the CRC of every chunk: truncation and corruption show, without
                # inflating 160 MB of pixels that the replica decodes anyway.
                image.verify()
            else:
                image.load()
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"the image has more than {MAX_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        claimed = _claimed_format(data)
        if claimed is None:
            raise UnsupportedMediaType(
                f"the upload is not an image in an accepted format; allowed: {allowed}"
            ) from None
        raise ImageUnreadable(
            f"the upload starts like a {FORMAT_NAMES[claimed]} image but cannot be read"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageUnreadable(f"the image cannot be decoded: {exc}") from None
    if kind not in UPLOAD_FORMATS:  # DECODERS above makes this unreachable; kept as a guard
        raise UnsupportedMediaType(f"the upload is {kind}; allowed: {allowed}")
    return UPLOAD_FORMATS[kind]


def _claimed_format(data: bytes) -> str | None:
    """The accepted format whose signature the bytes start with, if any: tells a damaged
    JPEG (422) from something that never was one (415)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None
