"""imgq: a client for the imgq image-classification service.

``Client`` (synchronous, standard library only) and ``AsyncClient`` (asyncio, on aiohttp:
``pip install 'imgq[async]'``) submit jobs and batches, wait for them, stream a job's events,
cancel, and classify any number of images (``classify_many``).  Both run the same core:
requests, retries (``Retries``), timeouts (``Timeouts``) and the rules of when a job is
final are written once.  Answers are typed values (``Job``, ``Label``, ``Batch``, ``Model``,
``Classification``); failures are ``ApiError`` (the server refused), ``Unreachable`` (no
answer; ``TimedOut``: none in time) or ``ImageReadError``, all ``ImgqClientError``.

A submission may name a ``callback_url`` the server POSTs the finished job to;
``imgq.webhooks`` gives your webhook secret and checks a callback's signature.

``import imgq`` does not import aiohttp: ``imgq.AsyncClient`` does, when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgq import webhooks
from imgq.client import Client
from imgq.config import Retries, Timeouts
from imgq.errors import ApiError, ImageReadError, ImgqClientError, TimedOut, Unreachable
from imgq.http_wire import ImageInput
from imgq.types import (
    FINAL_STATUSES,
    Batch,
    Classification,
    Info,
    Job,
    JobError,
    Label,
    Limits,
    Model,
    ModelVersion,
)
from imgq.version import version

if TYPE_CHECKING:
    from imgq.aio import AsyncClient

__version__ = version()

__all__ = [
    "FINAL_STATUSES",
    "ApiError",
    "AsyncClient",
    "Batch",
    "Classification",
    "Client",
    "ImageInput",
    "ImageReadError",
    "ImgqClientError",
    "Info",
    "Job",
    "JobError",
    "Label",
    "Limits",
    "Model",
    "ModelVersion",
    "Retries",
    "TimedOut",
    "Timeouts",
    "Unreachable",
    "webhooks",
]


def __getattr__(name: str) -> Any:
    # The asyncio client needs aiohttp: imported only by those who use it.
    if name == "AsyncClient":
        try:
            from imgq.aio import AsyncClient
        except ModuleNotFoundError as exc:
            if exc.name != "aiohttp":
                raise
            raise ImportError(
                "imgq.AsyncClient runs on aiohttp, which is not installed: "
                "pip install 'imgq[async]'"
            ) from exc
        return AsyncClient
    raise AttributeError(f"module 'imgq' has no attribute {name!r}")
