"""Entry point: ``python -m gateway``."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Sequence

from aiohttp import web

from gateway import keys, processes
from gateway.access_log import ACCESS_LOGGER, AccessLogger
from gateway.app import create_app
from gateway.event_loop import new_event_loop
from gateway.processes import Worker
from gateway.settings import GatewaySettings
from shared import tracing
from shared.config_reference import service_arguments
from shared.logs import setup_logging
from shared.settings import GATEWAY, process_env

DESCRIPTION = """\
The imgq gateway: serves the page and the JSON API, publishes each job to the broker's work
queue, follows the event log and answers for any job by its ID."""

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    service_arguments("python -m gateway", GATEWAY, DESCRIPTION, argv)
    settings = GatewaySettings.from_env(process_env())
    setup_logging(settings.logs, "gateway")
    if settings.processes > 1:
        status = processes.supervise(settings, serve_worker)
    else:
        status = serve(settings)
    # Non-zero when a background task died (gateway/lifeline.py): a supervisor restarts it.
    if status:
        sys.exit(status)


def serve_worker(
    settings: GatewaySettings, worker: Worker, sockets: Sequence[socket.socket]
) -> int:
    """One of several gateway processes (gateway/processes.py), on the sockets it was given."""
    # Each process' lines say which one wrote them.
    setup_logging(settings.logs, "gateway", worker.index)
    return serve(settings, worker, sockets)


def serve(
    settings: GatewaySettings,
    worker: Worker | None = None,
    sockets: Sequence[socket.socket] | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT; the exit status."""
    where = f"http://{settings.host}:{settings.port}/"
    # shutdown_timeout bounds how long open connections get once SIGTERM arrives; held
    # long-polls are answered at once by on_shutdown, so this is rarely reached.
    # Tracing starts before the app is built (its middleware is added only when on).
    with tracing.started(settings.tracing, "imgq-gateway"):
        app = create_app(settings, worker)
        web.run_app(
            app,
            host=None if sockets else settings.host,
            port=None if sockets else settings.port,
            sock=sockets,
            loop=new_event_loop(settings.event_loop),
            shutdown_timeout=5.0,
            access_log=ACCESS_LOGGER if settings.access_log else None,
            access_log_class=AccessLogger,
            print=lambda _: log.info(
                "gateway listening on %s (event loop: %s)", where, settings.event_loop
            ),
        )
    return app[keys.LIFELINE].exit_status


if __name__ == "__main__":
    main()
