"""Least privilege on a real broker: each service's user can do its job and nothing more."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aio_pika
import pytest
from aiormq.exceptions import ChannelAccessRefused

from compose.broker import BrokerNode, start_node
from compose.permissions import CLASSIFIER_USER, GATEWAY_USER, PRODUCER_USER
from compose.setup_broker import setup
from compose.stack import Stack
from shared import wire
from shared.messages import ClassifyRequest, JobEvent, new_job_id
from shared.producer import Producer
from shared.states import JobStatus
from shared.topology import (
    CANCELLATIONS,
    DEAD_LETTER_NOTICES,
    EVENT_LOG,
    EVENTS_EXCHANGE,
    REPLIES_EXCHANGE,
    REQUEST_ROUTING_KEY,
    REQUESTS_EXCHANGE,
    REQUESTS_QUEUE,
    WEBHOOK_RETRY_EXCHANGE,
    WEBHOOKS_QUEUE,
    model_queue,
    webhook_delay_queue,
)
from tests import api
from tests.callback_receiver import CallbackReceiver
from tests.cluster import MODEL, Cluster

COFFEE = (api.REPO / "images" / "coffee.jpg").read_bytes()

pytestmark = pytest.mark.timeout(300)

PASSWORDS = {GATEWAY_USER: "gw-secret", CLASSIFIER_USER: "cl-secret", PRODUCER_USER: "pr-secret"}


@pytest.fixture
def managed_node(log_dir: Path) -> Iterator[tuple[BrokerNode, Cluster]]:
    node = start_node(management=True)
    stack = Stack(node.url, log_dir / "least-privilege")
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield node, Cluster(node, stack)
    finally:
        stack.stop(timeout=15)
        node.stop()


def _url(node: BrokerNode, user: str) -> str:
    return f"amqp://{user}:{PASSWORDS[user]}@127.0.0.1:{node.amqp_port}/"


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    return None


def _refused(operation: Callable[[], Awaitable[None]]) -> bool:
    async def attempt() -> bool:
        try:
            await operation()
        except ChannelAccessRefused:
            return True
        return False

    return asyncio.run(attempt())


def test_services_work_as_least_privilege_users(managed_node: tuple[BrokerNode, Cluster]) -> None:
    node, cluster = managed_node
    cluster.env["IMGQ_DECLARE_TOPOLOGY"] = "false"
    # A replica may start before the setup step: it waits for the topology.
    replica = cluster.start_replica(IMGQ_BROKER_URL=_url(node, CLASSIFIER_USER))
    setup(
        {
            "IMGQ_ADMIN_URL": node.url,
            "IMGQ_MANAGEMENT_URL": f"http://guest:guest@127.0.0.1:{node.management_port}",
            "IMGQ_GATEWAY_PASSWORD": PASSWORDS[GATEWAY_USER],
            "IMGQ_CLASSIFIER_PASSWORD": PASSWORDS[CLASSIFIER_USER],
            "IMGQ_PRODUCER_PASSWORD": PASSWORDS[PRODUCER_USER],
            "IMGQ_WEBHOOK_RETRY_DELAYS": "0.5",
        }
    )
    # The gateway trusts each kind of event only from the user that may send it.
    gateway, url = cluster.start_gateway(
        IMGQ_BROKER_URL=_url(node, GATEWAY_USER),
        IMGQ_GATEWAY_USERS=GATEWAY_USER,
        IMGQ_CLASSIFIER_USERS=CLASSIFIER_USER,
        IMGQ_WEBHOOK_SECRET="w" * 32,
        IMGQ_WEBHOOK_ALLOW_NETWORKS="127.0.0.0/8",
        IMGQ_WEBHOOK_RETRY_DELAYS="0.5",
    )
    cluster.wait_replicas(1)
    job = api.submit(url, MODEL, "coffee.jpg")
    assert api.wait_final(url, job["job_id"])["result"][0]["label"] == "espresso"
    # Callbacks: the gateway reads the due queue and publishes a retry that comes back from
    # its delay queue as the gateway's (the classifier published the final event).
    with CallbackReceiver().running() as receiver:
        callback = receiver.plan("/hook", statuses=[503])
        body = {"model": MODEL, "image": "cat.jpg", "callback_url": callback}
        assert api.post_json(url, "/classifications", body).status == 202
        got = receiver.wait_for(lambda got: any(r.status == 200 for r in got), "/hook")
        assert [(r.status, r.headers["imgq-attempt"]) for r in got] == [(503, "1"), (200, "2")]
    cancelled = api.submit(url, MODEL, "cat.jpg")
    assert api.request(url, "DELETE", f"/classifications/{cancelled['job_id']}").status in (
        200,
        409,
    )
    assert replica.alive()

    async def gateway_takes_jobs() -> None:
        connection = await aio_pika.connect(_url(node, GATEWAY_USER))
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(REQUESTS_QUEUE)
            await queue.consume(_ignore)

    async def gateway_takes_a_models_jobs() -> None:
        connection = await aio_pika.connect(_url(node, GATEWAY_USER))
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(model_queue(MODEL))
            await queue.consume(_ignore)

    async def producer_takes_a_models_jobs() -> None:
        connection = await aio_pika.connect(_url(node, PRODUCER_USER))
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(model_queue(MODEL))
            await queue.consume(_ignore)

    async def classifier_deletes_the_shared_queues() -> None:
        connection = await aio_pika.connect(_url(node, CLASSIFIER_USER))
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(REQUESTS_QUEUE)

    async def classifier_submits_jobs() -> None:
        connection = await aio_pika.connect(_url(node, CLASSIFIER_USER))
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(REQUESTS_EXCHANGE)
            await exchange.publish(aio_pika.Message(b"{}"), REQUEST_ROUTING_KEY)

    async def classifier_reads_the_log() -> None:
        connection = await aio_pika.connect(_url(node, CLASSIFIER_USER))
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=10)
            queue = await channel.get_queue(EVENT_LOG)
            await queue.consume(_ignore, arguments={"x-stream-offset": "first"})

    # The default exchange reaches every queue by its name, and RabbitMQ checks a publish only
    # against its exchange: a classifier that could reply through it could also put jobs on
    # any work queue, append to the streams or fake dead letters.  It replies through
    # imgq.replies instead (below).
    def classifier_publishes_through_the_default_exchange(
        queue: str,
    ) -> Callable[[], Awaitable[None]]:
        async def attempt() -> None:
            connection = await aio_pika.connect(_url(node, CLASSIFIER_USER))
            async with connection:
                channel = await connection.channel(publisher_confirms=True)
                request = ClassifyRequest(
                    new_job_id(), MODEL, "coffee.jpg", time.time(), image=COFFEE
                )
                out = wire.request_message(request, content_type="image/jpeg")
                await channel.default_exchange.publish(out.message, queue)

        attempt.__name__ = f"classifier_publishes_into_{queue}_through_the_default_exchange"
        return attempt

    async def producer_publishes_a_reply() -> None:
        connection = await aio_pika.connect(_url(node, PRODUCER_USER))
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            replies = await channel.get_exchange(REPLIES_EXCHANGE)
            await replies.publish(aio_pika.Message(b"{}"), "amq.gen-someone-else")

    async def producer_binds_its_queue_to_the_events() -> None:
        connection = await aio_pika.connect(_url(node, PRODUCER_USER))
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(EVENTS_EXCHANGE, routing_key="#")

    async def gateway_deletes_the_queue() -> None:
        connection = await aio_pika.connect(_url(node, GATEWAY_USER))
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(REQUESTS_QUEUE)

    async def producer_reads_the_log() -> None:
        connection = await aio_pika.connect(_url(node, PRODUCER_USER))
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=10)
            queue = await channel.get_queue(EVENT_LOG)
            await queue.consume(_ignore, arguments={"x-stream-offset": "first"})

    async def producer_reads_the_callbacks() -> None:
        connection = await aio_pika.connect(_url(node, PRODUCER_USER))
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(WEBHOOKS_QUEUE)
            await queue.consume(_ignore)

    def schedules_a_callback(user: str) -> Callable[[], Awaitable[None]]:
        async def attempt() -> None:
            connection = await aio_pika.connect(_url(node, user))
            async with connection:
                channel = await connection.channel()
                exchange = await channel.get_exchange(WEBHOOK_RETRY_EXCHANGE)
                await exchange.publish(aio_pika.Message(b"{}"), webhook_delay_queue(0.5))

        attempt.__name__ = f"{user}_schedules_a_callback"
        return attempt

    async def producer_takes_jobs() -> None:
        connection = await aio_pika.connect(_url(node, PRODUCER_USER))
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(REQUESTS_QUEUE)
            await queue.consume(_ignore)

    for attempt in (
        gateway_takes_jobs,
        gateway_takes_a_models_jobs,
        producer_takes_a_models_jobs,
        classifier_deletes_the_shared_queues,
        classifier_submits_jobs,
        classifier_reads_the_log,
        gateway_deletes_the_queue,
        producer_reads_the_log,
        producer_takes_jobs,
        producer_publishes_a_reply,
        producer_binds_its_queue_to_the_events,
        producer_reads_the_callbacks,
        schedules_a_callback(PRODUCER_USER),
        schedules_a_callback(CLASSIFIER_USER),
        *(
            classifier_publishes_through_the_default_exchange(queue)
            for queue in (
                model_queue(MODEL),
                REQUESTS_QUEUE,
                CANCELLATIONS,
                EVENT_LOG,
                DEAD_LETTER_NOTICES,
                WEBHOOKS_QUEUE,
            )
        ),
    ):
        assert _refused(attempt), f"{attempt.__name__} should be refused"

    # The producer user can do what it is for: submit a job and read its own reply, which
    # comes through imgq.replies, since the classifier may not use the default exchange.
    async def producer_classifies() -> JobEvent:
        async with Producer(_url(node, PRODUCER_USER)) as producer:
            job_id = await producer.submit(MODEL, "coffee.jpg", COFFEE, "image/jpeg")
            async with asyncio.timeout(60):
                return (await producer.reply(job_id)).event

    reply = asyncio.run(producer_classifies())
    assert reply.status is JobStatus.SUCCEEDED
    assert reply.result is not None
    assert reply.result[0].label == "espresso"

    # RabbitMQ checks user_id: nobody can claim to be another user.
    async def classifier_claims_to_be_the_gateway() -> None:
        connection = await aio_pika.connect(_url(node, CLASSIFIER_USER))
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(EVENTS_EXCHANGE)
            forged = JobEvent.for_request(
                ClassifyRequest(new_job_id(), MODEL, "x.jpg", time.time(), image=b"x"),
                JobStatus.QUEUED,
            )
            out = wire.event_message(forged, user_id=GATEWAY_USER)
            await exchange.publish(out.message, out.routing_key)

    with pytest.raises(aio_pika.exceptions.AMQPError, match="user_id"):
        asyncio.run(classifier_claims_to_be_the_gateway())

    # A classifier may publish events, but not cancel a job: the gateway ignores it.
    queued = api.submit(url, MODEL, "cat.jpg")

    async def classifier_cancels(job: dict[str, object]) -> None:
        connection = await aio_pika.connect(_url(node, CLASSIFIER_USER))
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(EVENTS_EXCHANGE)
            event = JobEvent(str(job["job_id"]), JobStatus.CANCELLED, MODEL, "cat.jpg")
            out = wire.event_message(event, user_id=CLASSIFIER_USER)
            await exchange.publish(out.message, out.routing_key)

    asyncio.run(classifier_cancels(queued))
    assert api.wait_final(url, queued["job_id"])["status"] == "succeeded"
    deadline = time.monotonic() + 10
    refused = f"cancelled sent by {CLASSIFIER_USER}, who may not send it"
    while refused not in gateway.log_tail(100_000):
        assert time.monotonic() < deadline, gateway.log_tail()
        time.sleep(0.2)
