"""Entry point: ``python -m gateway``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from gateway import keys
from gateway.access_log import ACCESS_LOGGER, AccessLogger
from gateway.app import create_app
from gateway.settings import GatewaySettings
from shared import tracing
from shared.config_reference import service_arguments
from shared.logs import setup_logging
from shared.settings import GATEWAY, process_env

DESCRIPTION = """\
The imgq gateway: serves the page and the JSON API, publishes each job to the broker's work
queue, follows the event log and answers for any job by its ID."""


def main(argv: Sequence[str] | None = None) -> None:
    service_arguments("python -m gateway", GATEWAY, DESCRIPTION, argv)
    settings = GatewaySettings.from_env(process_env())
    setup_logging(settings.logs, "gateway")
    # shutdown_timeout bounds how long open connections get once SIGTERM arrives; held
    # long-polls are answered at once by on_shutdown, so this is rarely reached.
    # Tracing starts before the app is built (its middleware is added only when on).
    with tracing.started(settings.tracing, "imgq-gateway"):
        app = create_app(settings)
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            shutdown_timeout=5.0,
            access_log=ACCESS_LOGGER if settings.access_log else None,
            access_log_class=AccessLogger,
            print=lambda _: logging.getLogger(__name__).info(
                "gateway listening on http://%s:%d/", settings.host, settings.port
            ),
        )
    # Non-zero when a background task died (gateway/lifeline.py): a supervisor restarts it.
    status = app[keys.LIFELINE].exit_status
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
