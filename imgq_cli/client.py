"""The command line's HTTP client: the ``imgq`` library's synchronous transport (JSON in and
out), under the names the command line has always used."""

from __future__ import annotations

from imgq.errors import ApiError, Unreachable
from imgq.transport import DEFAULT_TIMEOUT, Answer
from imgq.transport import Transport as Client
from imgq.wire import Upload, encode_multipart

__all__ = [
    "DEFAULT_TIMEOUT",
    "Answer",
    "ApiError",
    "Client",
    "Unreachable",
    "Upload",
    "encode_multipart",
]
