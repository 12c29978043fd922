"""``imgq.Client``: the synchronous client, typed (standard library only)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from imgq.transport import DEFAULT_TIMEOUT, Transport
from imgq.types import Batch, Job, Model
from imgq.wire import ImageInput

# The longest long-poll a gateway allows by default (IMGQ_MAX_WAIT); a longer wait is made of
# several.
LONG_POLL = 30.0


class Client:
    """Talks to one gateway.  ``image`` arguments: a str names a gallery image on the server,
    a path (``pathlib.Path``) is a local file to upload, bytes are uploaded as they are.

    >>> client = Client("http://127.0.0.1:8080")
    >>> job = client.wait(client.submit("efficientnet_lite0", Path("cat.jpg")).job_id)
    >>> job.label.label
    'tabby'
    """

    def __init__(
        self, base_url: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.transport = Transport(base_url, token, timeout)

    @property
    def base_url(self) -> str:
        return self.transport.base_url

    def models(self) -> list[Model]:
        return [Model.from_dict(m) for m in self.transport.info().get("models") or ()]

    def submit(self, model: str, image: ImageInput, *, fresh: bool = False) -> Job:
        """One job; ``fresh`` asks for a new run even if the server knows the answer."""
        return Job.from_dict(self.transport.submit_image(model, image, fresh=fresh))

    def submit_batch(
        self, model: str, images: Sequence[ImageInput], *, fresh: bool = False
    ) -> Batch:
        """One job per image, all in one request (all accepted, or none)."""
        return Batch.from_dict(self.transport.submit_batch(model, images, fresh=fresh))

    def get(self, job_id: str) -> Job:
        return Job.from_dict(self.transport.job(job_id))

    def wait(self, job_id: str, timeout: float = 300.0) -> Job:
        """The job once it is final, or as it stands after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        job = self.get(job_id)
        while not job.is_final and (left := deadline - time.monotonic()) > 0:
            job = Job.from_dict(self.transport.job(job_id, wait=min(LONG_POLL, max(left, 0.1))))
        return job

    def get_batch(self, batch_id: str) -> Batch:
        return Batch.from_dict(self.transport.batch(batch_id))

    def wait_batch(self, batch_id: str, timeout: float = 300.0) -> Batch:
        """The batch once every job is final, or as it stands after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        batch = self.get_batch(batch_id)
        while not batch.done and (left := deadline - time.monotonic()) > 0:
            batch = Batch.from_dict(
                self.transport.batch(batch_id, wait=min(LONG_POLL, max(left, 0.1)))
            )
        return batch

    def events(self, job_id: str) -> Iterator[Job]:
        """The job now, then at each change of status; ends once it is final."""
        for data in self.transport.events(job_id):
            yield Job.from_dict(data)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job (returned, now cancelled), or forget a finished one (None).
        A started job cannot be cancelled: ``ApiError`` with status 409."""
        data = self.transport.delete(job_id)
        return None if data is None else Job.from_dict(data)
