"""imgq: a client for the imgq image-classification service.

``Client`` (synchronous, standard library only) and ``AsyncClient`` (asyncio, aiohttp) submit
jobs and batches, wait for them, stream a job's events and cancel; answers are typed values
(``Job``, ``Label``, ``Batch``, ``Model``); failures are ``ApiError`` (the server refused)
or ``Unreachable`` (no answer), both ``ImgqClientError``.
"""

from __future__ import annotations

from imgq.aio import AsyncClient
from imgq.client import Client
from imgq.errors import ApiError, ImgqClientError, Unreachable
from imgq.types import FINAL_STATUSES, Batch, Job, JobError, Label, Model
from imgq.wire import ImageInput

__all__ = [
    "FINAL_STATUSES",
    "ApiError",
    "AsyncClient",
    "Batch",
    "Client",
    "ImageInput",
    "ImgqClientError",
    "Job",
    "JobError",
    "Label",
    "Model",
    "Unreachable",
]
