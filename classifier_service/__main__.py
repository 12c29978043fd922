"""Entry point: ``python -m classifier_service``."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

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


async def serve(settings: ClassifierSettings) -> None:
    # Models load before the first connection, once per process, never per job; under ONNX
    # Runtime (the default) a model missing from the model cache is exported first, in a
    # subprocess, so this process never imports torch.
    models = load_models(settings)
    metrics = ReplicaMetrics()
    replica = Replica(settings, models, metrics)
    await replica.warm_up()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, replica.stop)
    server = await start_server(metrics, settings.metrics_host, settings.metrics_port)
    try:
        await replica.run()
    finally:
        if server is not None:
            await server.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    # Before anything is loaded: --help must not cost a model load.
    service_arguments("python -m classifier_service", CLASSIFIER, DESCRIPTION, argv)
    settings = ClassifierSettings.from_env(process_env())
    setup_logging(settings.logs, "classifier")
    with tracing.started(settings.tracing, "imgq-classifier"):
        asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
