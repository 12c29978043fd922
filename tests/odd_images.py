"""Images with the quirks of real files (and of hostile ones), made on the spot with Pillow."""

from __future__ import annotations

import io
import struct

from PIL import Image

# EXIF Orientation -> how the upright picture is stored, by the EXIF specification: 6 says
# "row 0 is the visual right side" (stored turned 90 degrees anticlockwise: Pillow's ROTATE_90),
# 8 "row 0 is the visual left side" (turned clockwise), 3 upside down; 2, 4, 5 and 7 mirror.
STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
ORIENTATION = 0x0112


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def stored_as_tagged(upright: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera stores for ``upright`` when it writes ``orientation``."""
    return upright.transpose(STORED[orientation])


def shown(stored: Image.Image, orientation: int) -> Image.Image:
    """What a viewer shows for ``stored`` pixels tagged ``orientation``: the upright picture.
    (By the table above, not by ``ImageOps.exif_transpose``, which the replica uses.)"""
    undo = {Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270}
    undo |= {later: earlier for earlier, later in undo.items()}
    step = STORED[orientation]
    return stored.transpose(undo.get(step, step))  # the others undo themselves


def tagged(upright: Image.Image, orientation: int, fmt: str = "JPEG", **options: object) -> bytes:
    """``upright`` stored as a camera would (turned or mirrored), with the tag that says so:
    a viewer shows it upright again."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(stored_as_tagged(upright, orientation), fmt, exif=exif, **options)


def mpo(first: Image.Image, *others: Image.Image) -> bytes:
    """A phone's multi-picture JPEG (MPF): Pillow reports it as "MPO"."""
    return encode(first, "MPO", save_all=True, append_images=list(others), quality=90)


def scan_bomb(scans: int = 500, size: tuple[int, int] = (2000, 2000)) -> bytes:
    """A progressive JPEG of ``size`` with ``scans`` scans, a few KiB: its last scan header is
    repeated with no data after it, and each empty scan still makes the decoder pass over every
    block of the image.  (Pillow's progressive script has 10 scans; entropy-coded data never
    holds the bytes FF DA, so ``rfind`` finds the last scan header.)"""
    data = encode(Image.new("RGB", size, (120, 80, 200)), progressive=True, quality=90)
    assert data.endswith(b"\xff\xd9")
    start = data.rfind(b"\xff\xda")
    header = data[start : start + 2 + int.from_bytes(data[start + 2 : start + 4], "big")]
    extra = scans - data.count(b"\xff\xda")
    return data[:-2] + header * extra + data[-2:]


def segment(marker: int, payload: bytes) -> bytes:
    """One JPEG marker segment: FF, the marker, the length (which counts itself), the payload."""
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def after_soi(jpeg: bytes, *segments: bytes) -> bytes:
    """``jpeg`` with ``segments`` inserted right after its start-of-image marker."""
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


_D50 = _s15(0.9642) + _s15(1.0) + _s15(0.8249)


def cmyk_profile(lab: tuple[float, float, float]) -> bytes:
    """An ICC v2 printer profile for CMYK whose every ink mix prints the one colour ``lab``.

    Neither Pillow nor this machine ships a CMYK profile (``ImageCms.createProfile`` makes only
    sRGB, Lab and XYZ), so the test builds the smallest one Little CMS accepts: a description,
    a white point and an A2B0 table (lut8Type: identity curves around a 2-point CLUT).
    """
    lightness, a, b = lab
    pcs = bytes([round(lightness / 100 * 255), round(a + 128), round(b + 128)])
    identity = bytes(range(256))
    matrix = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a2b0 = b"mft1" + bytes(4) + bytes([4, 3, 2, 0]) + matrix + identity * 4 + pcs * 16
    a2b0 += identity * 3
    text = b"imgq test CMYK\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 3 + 67)
    tags = [(b"desc", desc), (b"wtpt", b"XYZ " + bytes(4) + _D50), (b"A2B0", a2b0)]
    offset = 128 + 4 + 12 * len(tags)
    table = body = b""
    for signature, data in tags:
        data += bytes(-len(data) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += data
    header = struct.pack(">I", offset + len(body)) + bytes(4) + bytes([2, 0x10, 0, 0])
    header += b"prtrCMYKLab " + bytes(12) + b"acsp" + bytes(28) + _D50 + bytes(48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body
