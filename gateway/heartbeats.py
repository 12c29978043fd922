"""Replica heartbeats from the broker, into the registry of replicas online."""

from __future__ import annotations

import logging

from aio_pika.abc import AbstractIncomingMessage

from gateway.replicas import ReplicaRegistry
from shared import wire
from shared.errors import MessageError

log = logging.getLogger(__name__)


class Heartbeats:
    def __init__(self, replicas: ReplicaRegistry) -> None:
        self._replicas = replicas

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        """The heartbeats consumer (automatic acks): a beat that cannot be read or recorded is
        skipped with the reason, and the next one is taken as usual."""
        try:
            self._replicas.record(wire.parse_heartbeat(message))
        except MessageError as exc:
            log.warning("ignoring malformed heartbeat: %s", exc)
        except Exception as exc:  # whatever else one beat does: the next is read as usual
            log.warning("ignoring a heartbeat that could not be recorded: %r", exc)
