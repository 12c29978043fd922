"""Connect to any live node of a RabbitMQ cluster, and move on when it goes.

aio-pika's robust connection reconnects to the one URL it was given; its request for
multi-host failover has been open for years.  Both services therefore run their own
session loop: ``connect_any`` tries the nodes in turn, starting after the one that failed
last, and the caller re-creates channels, consumers and topology on the connection it gets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

log = logging.getLogger(__name__)

# Per node: long enough for a loaded broker's handshake, short enough that a frozen node
# (SIGSTOP: the TCP connect succeeds, nothing answers) does not hold up the failover.
CONNECT_TIMEOUT = 3.0


def safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def node_address(url: str) -> str:
    """host:port of a broker URL: how /status names a node."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"


_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


async def node_answers(url: str, wait: float = 1.0) -> bool:
    """Does the node at ``url`` speak AMQP right now?  It opens its listener only once it
    has booted, and a frozen node accepts the TCP connection but never answers."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    try:
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(host, port, ssl=parts.scheme == "amqps")
            try:
                writer.write(_AMQP_HEADER)
                frame = await reader.read(1)
            finally:
                writer.close()
        return frame == b"\x01"  # a METHOD frame: Connection.Start
    except (OSError, TimeoutError):
        return False


def broker_user(url: str) -> str:
    """The user a connection to ``url`` authenticates as (AMQP URLs default to guest)."""
    return urlsplit(url).username or "guest"


class NoBrokerNode(ConnectionError):
    """No node in the list accepted a connection."""


@dataclass
class NodeRing:
    """The nodes in a fixed order, and which one to try first next time."""

    urls: Sequence[str]
    _next: int = field(default=0)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("at least one broker URL is needed")

    async def connect_any(self, *, connection_name: str) -> tuple[AbstractConnection, str]:
        """A connection to the first node that answers, trying each once, in ring order from
        the one after the node used last (so a node that failed is tried last)."""
        errors = []
        for attempt in range(len(self.urls)):
            index = (self._next + attempt) % len(self.urls)
            url = self.urls[index]
            try:
                connection = await aio_pika.connect(
                    url,
                    timeout=CONNECT_TIMEOUT,
                    client_properties={"connection_name": connection_name},
                )
            except Exception as exc:  # refused, timed out, auth: try the next node
                errors.append(f"{safe_url(url)}: {exc!r}")
                continue
            # Next time (after this connection is lost) start with the following node.
            self._next = (index + 1) % len(self.urls)
            return connection, url
        raise NoBrokerNode("no broker node answered: " + "; ".join(errors))


async def watch_channel(lost: asyncio.Event, channel: AbstractChannel) -> AbstractChannel:
    """Set ``lost`` when the channel closes or the broker cancels one of its consumers (its
    queue deleted, say): the session then starts over and sets everything up again."""

    def on_loss(*_: object) -> None:
        if not lost.is_set():
            log.warning("a broker channel closed or a consumer was cancelled; reconnecting")
        lost.set()

    channel.close_callbacks.add(on_loss)
    (await channel.get_underlay_channel()).on_consumer_cancel_callbacks.add(on_loss)
    return channel
