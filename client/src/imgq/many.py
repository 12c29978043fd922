"""``classify_many``'s plan, written once for both clients: images in any number are cut into
chunks of what one request may carry (``/info``'s limits), and each chunk is one operation
that submits it as a batch under one idempotency key, follows its jobs and emits each
image's ``Classification`` as its job finishes.  The clients run ``Plan.parallel`` chunks at
once, which bounds the images in flight.

A batch is all or nothing on the server: when it refuses one image (its answer names the
index), that image gets its refusal and the others go again, in a batch of their own (a
refused batch made no job, so nothing is doubled).  A batch too large in bytes, or for the
client's burst, goes again in halves.  A gateway without ``POST /batches`` gets one request
per image.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from imgq import http_wire
from imgq.config import Timeouts
from imgq.core import Core, encode_batch, encode_read_job
from imgq.errors import ApiError, ImageReadError, ImgqClientError, Unreachable
from imgq.http_wire import ImageInput, Upload
from imgq.steps import Call, Emit, Operation, Sleep
from imgq.types import Batch, Classification, Job, Limits

# How long a batch's long-poll is held at most: a job that finished is reported within about
# this long, while the batch's other jobs are still running.
PROGRESS_POLL = 1.0
# Images in flight (submitted, not yet reported) when the caller does not say.
DEFAULT_IN_FLIGHT = 256
# Bytes of multipart framing around each image (its boundary and part headers), and around
# the whole body (the model field, the closing boundary), counted against the byte limit.
PART_OVERHEAD = 512
FORM_OVERHEAD = 64 * 1024
# A batch tried again after the server refused it part-way answers with the jobs the first
# try made, cancelled (the server cancels what it had queued): those images are submitted
# anew, under a new key, this many times at most.
MAX_RESUBMITS = 2
# Refusals that concern every image, not the one named: the run stops with them.
_FOR_ALL = frozenset({"unknown_model", "unauthorized"})
_INDEX = re.compile(r"images\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class Item:
    index: int
    name: str
    image: ImageInput
    # Bytes it adds to a batch, framing included.
    size: int


@dataclass(frozen=True, slots=True)
class BatchCreated:
    """Emitted when the server has accepted a batch (its ID is worth showing)."""

    batch: Batch


@dataclass(frozen=True, slots=True)
class Plan:
    model: str
    run_id: str
    fresh: bool
    chunk_size: int
    chunk_bytes: int
    # Chunks in flight at once.
    parallel: int
    # Seconds a chunk's jobs are followed after it is submitted (None: until final).
    timeout: float | None = None
    timeouts: float | Timeouts | None = None

    @classmethod
    def make(
        cls,
        model: str,
        limits: Limits,
        *,
        run_id: str,
        fresh: bool = False,
        max_in_flight: int = DEFAULT_IN_FLIGHT,
        batch_size: int | None = None,
        timeout: float | None = None,
        timeouts: float | Timeouts | None = None,
    ) -> Plan:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        size = min(limits.batch_max_images, batch_size or limits.batch_max_images, max_in_flight)
        return cls(
            model=model,
            run_id=run_id,
            fresh=fresh,
            chunk_size=size,
            chunk_bytes=limits.batch_max_bytes,
            parallel=max(1, max_in_flight // size),
            timeout=timeout,
            timeouts=timeouts,
        )

    def chunks(self, images: Iterable[ImageInput]) -> Iterator[list[Item]]:
        """The images in order, cut where a batch would hold too many or too many bytes.
        Reads nothing but file sizes, and the iterable only as far as needed."""
        chunk: list[Item] = []
        size = FORM_OVERHEAD
        for index, image in enumerate(images):
            item = Item(
                index,
                http_wire.display_name(image, index),
                image,
                http_wire.size_of(image) + PART_OVERHEAD,
            )
            if chunk and (len(chunk) >= self.chunk_size or size + item.size > self.chunk_bytes):
                yield chunk
                chunk, size = [], FORM_OVERHEAD
            chunk.append(item)
            size += item.size
        if chunk:
            yield chunk

    # -- one chunk ---------------------------------------------------------------------

    def classify(self, core: Core, chunk: list[Item]) -> Operation[None]:
        """Emits a ``Classification`` for every image of ``chunk`` (and ``BatchCreated`` for
        each batch the server accepts); raises when the run cannot go on (the server gone
        for longer than the retry policy waits, or a refusal that concerns every image)."""
        deadline = math.inf if self.timeout is None else time.monotonic() + self.timeout
        todo: list[tuple[list[Item], int]] = [(chunk, 0)]
        while todo:
            group, attempt = todo.pop(0)
            read: list[tuple[Item, str | Upload | ImageReadError]] = yield Call(
                functools.partial(_read, group)
            )
            ready: list[tuple[Item, str | Upload]] = []
            for item, image in read:
                if isinstance(image, ImageReadError):
                    yield Emit(Classification(item.index, item.name, None, image))
                else:
                    ready.append((item, image))
            # Images sent again after a refusal part-way go under a key of their own.
            run = self.run_id if attempt == 0 else f"{self.run_id}/{attempt}"
            if len(ready) == 1:
                yield from self._single(core, *ready[0], run, deadline)
            elif ready:
                again = yield from self._batch(core, ready, run, attempt, deadline)
                todo[:0] = [(items, attempt) for items in again.split]
                if again.resubmit:
                    todo.append((again.resubmit, attempt + 1))

    def _batch(
        self,
        core: Core,
        ready: list[tuple[Item, str | Upload]],
        run: str,
        attempt: int,
        deadline: float,
    ) -> Operation[_Again]:
        items = [item for item, _ in ready]
        images = [image for _, image in ready]
        encoded = yield Call(lambda: encode_batch(self.model, images, run))
        try:
            batch = yield from core.post_batch(encoded, fresh=self.fresh, timeouts=self.timeouts)
        except ApiError as exc:
            if exc.status in (404, 405) and exc.code != "batch_not_found":
                # A gateway from before POST /batches: one request per image.
                for item, image in ready:
                    yield from self._single(core, item, image, run, deadline)
                return _Again()
            refused = _refused_index(exc, len(items))
            if refused is not None and exc.code not in _FOR_ALL:
                item = items[refused]
                yield Emit(Classification(item.index, item.name, None, _for_one(exc)))
                rest = items[:refused] + items[refused + 1 :]
                return _Again(split=[rest] if rest else [])
            if exc.status in (413, 429) and len(items) > 1:
                half = len(items) // 2
                return _Again(split=[items[:half], items[half:]])
            raise
        if len(batch.jobs) != len(items):
            raise Unreachable(
                core.base_url, f"batch {batch.batch_id} answered {len(batch.jobs)} jobs for "
                f"{len(items)} images"
            )  # fmt: skip
        yield Emit(BatchCreated(batch))
        waiting: dict[str, Item] = {}
        resubmit: list[Item] = []
        for item, job in zip(items, batch.jobs, strict=True):
            if job.status == "cancelled" and attempt < MAX_RESUBMITS:
                resubmit.append(item)
            elif job.is_final:
                yield Emit(Classification(item.index, item.name, job))
            else:
                waiting[job.job_id] = item
        yield from self._follow(core, batch, waiting, deadline)
        return _Again(resubmit=resubmit)

    def _follow(
        self, core: Core, batch: Batch, waiting: dict[str, Item], deadline: float
    ) -> Operation[None]:
        """Emits each waiting job once final; as they stand when ``deadline`` passes."""
        known = {job.job_id: job for job in batch.jobs}
        while waiting and (left := deadline - time.monotonic()) > 0:
            try:
                current = yield from core.get_batch(
                    batch.batch_id, wait=min(PROGRESS_POLL, left), timeouts=self.timeouts
                )
                jobs, gone = list(current.jobs), list(current.gone)
            except ApiError as exc:
                if exc.code != "batch_not_found":
                    raise
                # A gateway that has not rebuilt the batch from the event log (yet), or has
                # dropped it: its jobs answer for themselves.
                jobs, gone = yield from self._one_by_one(core, waiting)
            for job in jobs:
                known[job.job_id] = job
                item = waiting.get(job.job_id)
                if item is not None and job.is_final:
                    del waiting[job.job_id]
                    yield Emit(Classification(item.index, item.name, job))
            for job_id in gone:
                item = waiting.pop(job_id, None)
                if item is not None:
                    yield Emit(Classification(item.index, item.name, known[job_id], _gone(job_id)))
        for job_id, item in waiting.items():
            yield Emit(Classification(item.index, item.name, known[job_id]))

    def _one_by_one(
        self, core: Core, waiting: dict[str, Item]
    ) -> Operation[tuple[list[Job], list[str]]]:
        jobs: list[Job] = []
        gone: list[str] = []
        for job_id in list(waiting):
            try:
                jobs.append((yield from core.get(job_id, timeouts=self.timeouts)))
            except ApiError as exc:
                if exc.status not in (404, 410):
                    raise
                gone.append(job_id)
        if not gone and not any(job.is_final for job in jobs):
            yield Sleep(PROGRESS_POLL)  # nothing new: ask again in a moment, not at once
        return jobs, gone

    def _single(
        self, core: Core, item: Item, image: str | Upload, run: str, deadline: float
    ) -> Operation[None]:
        encoded = yield Call(lambda: encode_read_job(self.model, image, run))
        try:
            job = yield from core.post_job(encoded, fresh=self.fresh, timeouts=self.timeouts)
        except ApiError as exc:
            if exc.status >= 500 or exc.status in (401, 404, 405) or exc.code in _FOR_ALL:
                raise
            yield Emit(Classification(item.index, item.name, None, exc))
            return
        job = yield from core.follow(job, deadline, changes=False, timeouts=self.timeouts)
        yield Emit(Classification(item.index, item.name, job))


@dataclass(frozen=True, slots=True)
class _Again:
    """What a batch leaves to do."""

    # Groups to submit next, as they are (what a refusal left, or halves).
    split: list[list[Item]] = field(default_factory=list)
    # Images whose jobs came back cancelled: submitted anew under a new key.
    resubmit: list[Item] = field(default_factory=list)


def _read(group: list[Item]) -> list[tuple[Item, str | Upload | ImageReadError]]:
    read: list[tuple[Item, str | Upload | ImageReadError]] = []
    for item in group:
        try:
            read.append((item, http_wire.name_or_upload(item.image)))
        except ImageReadError as exc:
            read.append((item, exc))
    return read


def _refused_index(exc: ApiError, size: int) -> int | None:
    """The image a batch refusal names (its detail starts ``images[<index>]``)."""
    match = _INDEX.match(exc.detail)
    if match is None or not 0 <= int(match.group(1)) < size:
        return None
    return int(match.group(1))


def _for_one(exc: ApiError) -> ApiError:
    """The refusal as it concerns its image alone: without the ``images[<index>] (<name>): ``
    that places it in a batch the caller never saw."""
    head, found, detail = exc.detail.partition("): ")
    if not found or not head.startswith("images["):
        return exc
    return ApiError(exc.status, exc.code, detail, exc.problem, exc.headers, exc.request_id)


def _gone(job_id: str) -> ImgqClientError:
    return ApiError(410, "job_gone", f"job {job_id} was deleted or expired before it finished")
