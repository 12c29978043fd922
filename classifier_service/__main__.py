"""Entry point: ``python -m classifier_service``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from classifier_service import health
from classifier_service.metrics import ReplicaMetrics, start_server
from classifier_service.models import load_models
from classifier_service.settings import ClassifierSettings
from classifier_service.worker import Replica
from shared import tracing
from shared.config_reference import service_arguments
from shared.logs import setup_logging
from shared.settings import CLASSIFIER, process_env

DESCRIPTION = """\
An imgq classifier replica: loads its models once, takes jobs from the broker's work queue,
classifies them and publishes the results."""

log = logging.getLogger("classifier_service")


async def serve(settings: ClassifierSettings) -> int:
    # Models load before the first connection, once per process, never per job; under ONNX
    # Runtime (the default) a model missing from the model cache is exported first, in a
    # subprocess, so this process never imports torch.  On a thread: meanwhile the loop keeps
    # the health file saying "alive, not ready", so a slow first export is not taken for a hang.
    async with _starting(settings):
        models = await asyncio.to_thread(load_models, settings)
        metrics = ReplicaMetrics()
        replica = Replica(settings, models, metrics)
        await replica.warm_up()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, replica.stop)
    server = await start_server(metrics, settings.metrics_host, settings.metrics_port)
    try:
        return await replica.run()
    finally:
        if server is not None:
            await server.cleanup()


@contextlib.asynccontextmanager
async def _starting(settings: ClassifierSettings) -> AsyncIterator[None]:
    async def report() -> None:
        path = Path(settings.health_file)
        while True:
            starting = health.Health(
                at=time.time(),
                interval=settings.heartbeat_interval,
                ready=False,
                stalled=False,
                reason="starting: loading and warming up the models",
                replica=settings.replica_id,
                pid=os.getpid(),
            )
            try:
                health.write(path, starting)
            except OSError as exc:
                log.warning("health file %s not written: %s", path, exc)
            await asyncio.sleep(settings.heartbeat_interval)

    task = asyncio.create_task(report())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def main(argv: Sequence[str] | None = None) -> None:
    # Before anything is loaded: --help must not cost a model load.
    service_arguments("python -m classifier_service", CLASSIFIER, DESCRIPTION, argv)
    settings = ClassifierSettings.from_env(process_env())
    setup_logging(settings.logs, "classifier")
    with tracing.started(settings.tracing, "imgq-classifier"):
        status = asyncio.run(serve(settings))
    if status != 0:
        # A background task died (logged): end now, without waiting on an inference thread
        # that may never finish, so that the supervisor starts a fresh process.
        logging.shutdown()
        os._exit(status)


if __name__ == "__main__":
    main()
