"""One-shot broker setup for a deployment: ``python -m compose.setup_broker``.

Run with the operator's (administrator) account before the services start, it
creates one broker user per service with only the grants in ``compose.permissions``
(through the management HTTP API) and declares the shared topology (through AMQP),
so the services themselves need no right to declare anything.  Idempotent: run it
on every deployment.

Environment: ``IMGQ_ADMIN_URL`` (AMQP URL of the operator account),
``IMGQ_MANAGEMENT_URL`` (``http://user:password@host:15672``), the three users' passwords,
and the queue/log bounds the services also read; ``--help`` lists them all.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence

import aio_pika

from compose.permissions import CLASSIFIER_USER, GATEWAY_USER, GRANTS, PRODUCER_USER
from shared.catalog import catalog_models
from shared.config_reference import service_arguments
from shared.settings import SETUP, Environ, env_str, process_env, variable
from shared.topology import (
    LogRetention,
    QueueBounds,
    WebhookRetries,
    declare_event_log,
    declare_model_queue,
    declare_topology,
    declare_webhooks,
)

log = logging.getLogger("imgq.setup")

_ADMIN_URL = variable(
    "IMGQ_ADMIN_URL",
    "amqp://guest:guest@127.0.0.1:5672/",
    SETUP,
    "AMQP URL of the operator's account, which declares the topology (its vhost is the one "
    "granted)",
)
_MANAGEMENT_URL = variable(
    "IMGQ_MANAGEMENT_URL",
    "http://guest:guest@127.0.0.1:15672",
    SETUP,
    "the broker's management API, with the operator's user and password",
)
# No defaults: the users exist to be kept apart, so each password is the deployment's own.
_PASSWORDS = {
    user: variable(
        name, "", SETUP, f"password of the broker user `{user}` it creates", shown="required"
    )
    for user, name in (
        (GATEWAY_USER, "IMGQ_GATEWAY_PASSWORD"),
        (CLASSIFIER_USER, "IMGQ_CLASSIFIER_PASSWORD"),
        (PRODUCER_USER, "IMGQ_PRODUCER_PASSWORD"),
    )
}


def _management(url: str, method: str, path: str, body: dict[str, str]) -> None:
    parts = urllib.parse.urlsplit(url)
    credentials = f"{parts.username or ''}:{parts.password or ''}".encode()
    base = urllib.parse.urlunsplit((parts.scheme, parts.hostname or "", "", "", ""))
    if parts.port:
        base = f"{base}:{parts.port}"
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(credentials).decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def create_users(management_url: str, vhost: str, passwords: dict[str, str]) -> None:
    quoted_vhost = urllib.parse.quote(vhost, safe="")
    for user, grant in GRANTS.items():
        name = urllib.parse.quote(user, safe="")
        _management(
            management_url, "PUT", f"/api/users/{name}", {"password": passwords[user], "tags": ""}
        )
        _management(
            management_url,
            "PUT",
            f"/api/permissions/{quoted_vhost}/{name}",
            {"configure": grant.configure, "write": grant.write, "read": grant.read},
        )
        log.info(
            "user %s: configure %s, write %s, read %s",
            user,
            grant.configure,
            grant.write,
            grant.read,
        )


async def declare(
    admin_url: str,
    bounds: QueueBounds,
    retention: LogRetention,
    models: Sequence[str] = (),
    retries: WebhookRetries | None = None,
) -> None:
    connection = await aio_pika.connect(admin_url)
    async with connection:
        channel = await connection.channel()
        topology = await declare_topology(channel, bounds)
        await declare_event_log(channel, topology.events, retention)
        # The callbacks' queues: the due queue, and a delay queue per retry delay.
        await declare_webhooks(channel, topology.events, retries or WebhookRetries())
        # Least-privilege services may declare their model queues themselves; declaring the
        # configured ones here too means their jobs can wait before any replica has started.
        for model in models:
            await declare_model_queue(channel, topology.router, bounds, model)
    log.info("topology declared, with queues for %s", ", ".join(models) or "no models")


def setup(env: Environ) -> None:
    admin_url = env_str(env, _ADMIN_URL.name, _ADMIN_URL.default)
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(admin_url).path[1:]) or "/"
    passwords = {user: env_str(env, var.name, var.default) for user, var in _PASSWORDS.items()}
    create_users(env_str(env, _MANAGEMENT_URL.name, _MANAGEMENT_URL.default), vhost, passwords)
    asyncio.run(
        declare(
            admin_url,
            QueueBounds.from_env(env),
            LogRetention.from_env(env),
            catalog_models(env),
            WebhookRetries.from_env(env),
        )
    )


DESCRIPTION = """\
One-shot broker setup, run as the operator before the services start: creates one broker user
per service with only the grants it needs (management API) and declares the shared topology
(AMQP).  Idempotent: run it on every deployment."""


def main(argv: Sequence[str] | None = None) -> int:
    service_arguments("python -m compose.setup_broker", SETUP, DESCRIPTION, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [setup] %(message)s")
    deadline = time.monotonic() + 120
    while True:
        try:
            setup(process_env())
            return 0
        except (OSError, urllib.error.URLError, aio_pika.exceptions.AMQPError) as exc:
            # The broker may still be starting even after its health check passed.
            if time.monotonic() > deadline:
                print(f"broker setup failed: {exc!r}", file=sys.stderr)
                return 1
            log.info("broker not ready (%r); retrying", exc)
            time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
