"""Submit images straight to imgq's broker and wait for the replies (no HTTP involved).

    python examples/amqp_producer.py --broker amqp://guest:guest@127.0.0.1:5672/ \\
        --model efficientnet_lite0 images/coffee.jpg images/cat.jpg

Each image becomes one request (schema version 2) published to the ``imgq.requests``
exchange with publisher confirms: the file's bytes, unchanged, are the message body; the
model, image name and submission time are headers; ``message_id`` is the job ID,
``reply_to`` an exclusive, server-named queue of our own and ``correlation_id`` the job ID.
The replica that finishes a job publishes the final ``JobEvent`` (JSON) there, and, as
always, to the ``imgq.events`` exchange.  ``shared.producer.Producer`` does the publishing
and matches replies to jobs; ``shared.wire.request_message`` builds the message.

See docs/amqp.md for the contract; ``classify`` below is the importable core.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import mimetypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aio_pika.exceptions import AMQPError

from shared.catalog import DEFAULT_MODEL
from shared.connect import safe_url
from shared.errors import ImgqError, QueueFull
from shared.messages import JobEvent
from shared.producer import Producer, ProducerError, Reply
from shared.wire import OCTET_STREAM

__all__ = ["Producer", "ProducerError", "QueueFull", "Reply", "classify", "main"]

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672/"


async def classify(
    broker_url: str,
    model: str,
    images: Sequence[tuple[str, bytes]],
    timeout: float = 120.0,  # noqa: ASYNC109 (one deadline for the whole call, as documented)
) -> list[JobEvent]:
    """Classify ``(name, encoded image bytes)`` pairs; the final events, in the same order.

    Raises ``TimeoutError`` if some reply has not come within ``timeout`` seconds (the jobs
    themselves stay queued on the broker and still finish).
    """
    async with Producer(broker_url) as producer:
        job_ids = [
            await producer.submit(model, name, data, mimetypes.guess_type(name)[0] or OCTET_STREAM)
            for name, data in images
        ]
        async with asyncio.timeout(timeout):
            replies = [await producer.reply(job_id) for job_id in job_ids]
    return [reply.event for reply in replies]


def _describe(event: JobEvent) -> str:
    if event.result:
        best = event.result[0]
        return f"{event.status.value}: {best.label} ({best.score:.3f})"
    if event.error is not None:
        return f"{event.status.value}: {event.error.code}: {event.error.message}"
    return event.status.value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--broker",
        default=os.environ.get("IMGQ_BROKER_URL", DEFAULT_BROKER),
        help="AMQP URL (env IMGQ_BROKER_URL)",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for all")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE_FILE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    # aiormq logs connection failures itself; the error line below says it once.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    try:
        images = [(path.name, path.read_bytes()) for path in args.images]
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        events = asyncio.run(classify(args.broker, args.model, images, args.timeout))
    except ImgqError as exc:  # ProducerError, QueueFull: the broker would not take a job
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"error: not every reply came within {args.timeout:g} s", file=sys.stderr)
        return 1
    except (AMQPError, OSError) as exc:
        print(f"error: cannot use the broker at {safe_url(args.broker)}: {exc}", file=sys.stderr)
        return 2
    for (name, _), event in zip(images, events, strict=True):
        print(f"{event.job_id}  {name}  {_describe(event)}")
    return 0 if all(event.status.value == "succeeded" for event in events) else 1


if __name__ == "__main__":
    sys.exit(main())
