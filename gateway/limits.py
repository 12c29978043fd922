"""What the gateway accepts from a client, as named limits.  Each says why it is what it is."""

from __future__ import annotations

from typing import Final

from shared.images import MEDIA_TYPES
from shared.messages import MAX_CALLBACK_CHARS

MIB: Final = 1024 * 1024

# An uploaded image, in bytes.  A phone photo is 2-8 MiB; and the image travels base64-encoded
# inside the broker message (x 4/3), so 10 MiB stays under RabbitMQ 4's default 16 MiB
# max_message_size and 75 of them fit in the work queue's 1 GiB byte bound.
MAX_UPLOAD_BYTES: Final = 10 * MIB
MAX_UPLOAD_TEXT: Final = "10 MiB"
# Room for the multipart framing around the file: boundaries, part headers, the model field.
FORM_OVERHEAD_BYTES: Final = 64 * 1024
# The whole request body (aiohttp's client_max_size; its default of 1 MiB would refuse photos).
MAX_REQUEST_BYTES: Final = MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES
# A JSON or urlencoded submission carries two names, never an image: anything longer is not
# one of ours, so it is refused before it is read.
MAX_SMALL_BODY_BYTES: Final = 64 * 1024
# A text field of a form (model or gallery image name): names are short; anything longer is
# not a name.
MAX_FIELD_BYTES: Final = 1024
# A form's callback_url: the longest URL a callback may have (shared/messages.py), each
# character as many as four bytes of UTF-8.
MAX_URL_FIELD_BYTES: Final = 4 * MAX_CALLBACK_CHARS
# Parts in one multipart body: ours has two or three; many more is someone probing.
MAX_FORM_PARTS: Final = 8
# An Idempotency-Key: long enough for a UUID or a client's own request ID, short enough to
# index cheaply.
MAX_IDEMPOTENCY_KEY: Final = 255

# Pixels (width x height).  The models look at 224-260 px, so 40 megapixels is more than any
# camera photo needs, while a few KiB of PNG can claim 9000x9000 and expand to hundreds of
# MiB when decoded (a decompression bomb).  Replicas refuse above 64 MP; we refuse first.
MAX_PIXELS: Final = 40_000_000

# Formats the replicas decode, by Pillow's name -> media type (the gallery offers the same):
# JPEG (MPO, a phone's JPEG with extra frames, too), PNG and WebP, as shared/images.py defines
# them for both sides.  Sniffed from the bytes; the filename and the part's Content-Type are
# the client's claims and are never trusted.
UPLOAD_FORMATS: Final = MEDIA_TYPES

# Uploads checked at once: a check may hold a decoded image (a 40 MP WebP is 160 MB of pixels)
# and a core, so more at a time would only trade memory for no throughput on a small box.
MAX_CONCURRENT_CHECKS: Final = 2
# Uploads that may wait for a check thread, beyond those being checked.  A few let a burst
# (a page sending several photos) through; each one waiting holds its bytes (up to 10 MiB)
# and a check takes up to a second, so a longer line only makes every upload in it slower
# than a client's retry after the 503 that refuses the next one.
MAX_WAITING_CHECKS: Final = 8

# The displayed name of an upload ("upload:<name>"): enough for any real file name, short
# enough for a page row and a log line.
MAX_FILENAME_CHARS: Final = 100
