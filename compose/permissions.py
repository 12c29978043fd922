"""Least privilege on the broker: what each service's user may do, in one table.

RabbitMQ checks three regular expressions per user and vhost: *configure* (declare
or delete a resource), *write* (publish to an exchange, bind a queue) and *read*
(consume from a queue, bind from an exchange).  With these grants a gateway cannot
take jobs off the work queue and a classifier cannot submit jobs or read the event
log; neither can declare or delete the shared topology, which the setup step
(``python -m compose.setup_broker``) declares with the operator's account.  No user may
publish to the default exchange, which reaches every queue by its name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.topology import (
    CANCELLATIONS,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_NOTICES,
    EVENT_LOG,
    EVENTS_EXCHANGE,
    MODEL_QUEUE_PREFIX,
    MODEL_ROUTER,
    REPLIES_EXCHANGE,
    REQUESTS_EXCHANGE,
    REQUESTS_QUEUE,
    WEBHOOK_RETRY_EXCHANGE,
    WEBHOOKS_QUEUE,
)

GATEWAY_USER = "imgq-gateway"
CLASSIFIER_USER = "imgq-classifier"
# For programs that submit jobs straight over AMQP (docs/amqp.md, examples/amqp_producer.py).
PRODUCER_USER = "imgq-producer"
# Server-named queues (a gateway's private heartbeat queue) are called amq.gen-...
_PRIVATE_QUEUES = r"amq\.gen-.*"
# Each model's work queue (imgq.model.<model ID>): a replica declares and binds the queues of
# the models it serves, whatever its model repository holds (binding takes write on the queue
# and read on the router exchange).  The price: it could also delete one.
_MODEL_QUEUES = re.escape(MODEL_QUEUE_PREFIX) + ".+"


def _one_of(*names: str, private: bool = False, models: bool = False) -> str:
    """A regex matching exactly these resource names (and, if asked, private queues and the
    model queues)."""
    alternatives = [re.escape(name) for name in names] + ([_PRIVATE_QUEUES] if private else [])
    alternatives += [_MODEL_QUEUES] if models else []
    return "^(" + "|".join(alternatives) + ")$"


@dataclass(frozen=True, slots=True)
class Grant:
    configure: str
    write: str
    read: str


GRANTS: dict[str, Grant] = {
    GATEWAY_USER: Grant(
        configure=f"^{_PRIVATE_QUEUES}$",
        # Publish requests and events (markers, cancellations) and callbacks' retries; bind its
        # private queue.  (The model queues it would declare for its models are the setup
        # step's to declare.)
        write=_one_of(REQUESTS_EXCHANGE, EVENTS_EXCHANGE, WEBHOOK_RETRY_EXCHANGE, private=True),
        # Follow the log, turn dead letters into failed jobs, hear heartbeats, deliver
        # callbacks.
        read=_one_of(EVENTS_EXCHANGE, EVENT_LOG, DEAD_LETTER_NOTICES, WEBHOOKS_QUEUE, private=True),
    ),
    CLASSIFIER_USER: Grant(
        # The queues of the models it serves.
        configure=_one_of(models=True),
        # Publish events, and replies through imgq.replies; bind its model queues.  Declaring
        # a queue that dead-letters takes write on its dead-letter exchange too (the broker
        # checks it at declaration).  Never the default exchange ("amq.default"): the broker
        # checks only the exchange of a publish, never its routing key, so write there would
        # be write into every queue by name, the work queues included.
        write=_one_of(EVENTS_EXCHANGE, REPLIES_EXCHANGE, DEAD_LETTER_EXCHANGE, models=True),
        read=_one_of(REQUESTS_QUEUE, CANCELLATIONS, MODEL_ROUTER, models=True),
    ),
    PRODUCER_USER: Grant(
        # Declare its own server-named reply queue and bind it to imgq.replies (binding takes
        # write on the queue and read on the exchange), publish jobs, read its replies:
        # nothing else (it cannot read the event log, other jobs, or the work queue, nor
        # publish a reply).  Its queue is exclusive, so no other connection may consume,
        # bind or delete it.
        configure=f"^{_PRIVATE_QUEUES}$",
        write=_one_of(REQUESTS_EXCHANGE, private=True),
        read=_one_of(REPLIES_EXCHANGE, private=True),
    ),
}
