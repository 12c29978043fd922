"""What one of several gateway processes on a port (``gateway/processes.py``) answers for all.

A request reaches whichever process the kernel hands its connection to, but a probe or a scrape
asks about the gateway as a whole.  So each process serves its own state on a Unix socket in
the supervisor's private folder (``serve_own``), and the process asked gathers its siblings':

- ``/metrics``: every series of every process, each with a ``process`` label (its index, 0 to
  N-1, kept across its restarts).  Per process rather than summed, so a process that restarts
  resets its own counters, which Prometheus' ``rate()`` reads as the reset it is, and the
  ``process_*`` metrics (memory, CPU) stay each process' own.  The work queues' depths are the
  broker's and come once, without the label.  A process that does not answer within
  ``ASK_SECONDS`` is left out of that scrape.
- ``/readyz``: ready when every process is (connected, the log replayed): otherwise a share of
  the connections would meet a process that answers 503, so the whole gateway stays out of
  its load balancer while one of its processes starts again.
- ``/healthz``: alive when every running process answers: one whose event loop hangs would
  otherwise go unseen by a liveness probe that mostly reaches the others.  A process that is
  not running (the supervisor starts it again) does not count against it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web
from prometheus_client import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway import keys
from gateway.processes import Worker

log = logging.getLogger(__name__)

# The label that tells the processes' series apart.
PROCESS_LABEL: Final = "process"
# Families that are not any one process': read from the broker by the one that was scraped.
SHARED_FAMILIES: Final = frozenset({"imgq_queue_depth"})
# How long a probe or a scrape waits for each other process: well inside a kubelet's probe
# timeout (5 s in k8s/), far above what a process that is not hung takes.
ASK_SECONDS: Final = 2.0


def _worker(app: web.Application) -> Worker:
    worker = app[keys.WORKER]
    assert worker is not None, "only a gateway of several processes has siblings"
    return worker


async def serve_own(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: this process' own metrics, liveness and readiness on its Unix socket,
    for its siblings to ask, while the app runs."""
    worker = _worker(app)
    path = worker.socket_path(worker.index)
    # The socket file of this process' previous life, if it died.
    path.unlink(missing_ok=True)

    async def metrics(request: web.Request) -> web.Response:
        # Without the queue depths: the process that was scraped reads those from the broker.
        store = app[keys.STORE]
        return web.Response(
            body=app[keys.METRICS].expose(long_polls=store.waiting, queue_depths={})
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        return web.Response(status=200 if app[keys.BROKER].ready else 503)

    own = web.Application()
    own.router.add_get("/metrics", metrics)
    own.router.add_get("/healthz", healthz)
    own.router.add_get("/readyz", readyz)
    runner = web.AppRunner(own, access_log=None, handle_signals=False)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def _ask(path: Path, route: str) -> tuple[int, str]:
    """One sibling's answer to ``route``: its status and body.  OSError: nothing listens on its
    socket (it is not running); TimeoutError: something does but did not answer."""
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(path)),
            timeout=aiohttp.ClientTimeout(total=ASK_SECONDS),
        ) as session,
        session.get(f"http://gateway{route}") as response,
    ):
        return response.status, await response.text()


async def _ask_all(worker: Worker, route: str) -> list[tuple[int, tuple[int, str] | Exception]]:
    answers = await asyncio.gather(
        *(_ask(worker.socket_path(i), route) for i in worker.siblings), return_exceptions=True
    )
    result: list[tuple[int, tuple[int, str] | Exception]] = []
    for index, answer in zip(worker.siblings, answers, strict=True):
        if isinstance(answer, BaseException) and not isinstance(answer, Exception):
            raise answer
        result.append((index, answer))
    return result


async def unready(app: web.Application) -> str | None:
    """Why another process of this gateway is not ready, or None when every one is."""
    for index, answer in await _ask_all(_worker(app), "/readyz"):
        if isinstance(answer, Exception):
            return f"gateway process {index} is not running or does not answer ({answer!r})"
        if answer[0] != 200:
            return f"gateway process {index} is not connected to the broker or still replaying"
    return None


async def unresponsive(app: web.Application) -> str | None:
    """Which running process of this gateway does not answer, or None."""
    for index, answer in await _ask_all(_worker(app), "/healthz"):
        if isinstance(answer, Exception) and _not_running(answer):
            continue  # its supervisor starts it again
        if isinstance(answer, Exception) or answer[0] != 200:
            return f"gateway process {index} accepts connections but does not answer"
    return None


def _not_running(error: Exception) -> bool:
    """Nothing listens on the process' socket (refused, or no socket file): not a process that
    hangs, which accepts the connection and then times out."""
    return isinstance(error, OSError) and not isinstance(error, TimeoutError)


async def gathered(app: web.Application, queue_depths: Mapping[str, int | None]) -> bytes:
    """Every process' metrics, each series labelled with its process, as one exposition."""
    worker = _worker(app)
    own = app[keys.METRICS].expose(long_polls=app[keys.STORE].waiting, queue_depths=queue_depths)
    texts = {worker.index: own.decode()}
    for index, answer in await _ask_all(worker, "/metrics"):
        if isinstance(answer, Exception) or answer[0] != 200:
            log.warning("no metrics from gateway process %d: %r", index, answer)
        else:
            texts[index] = answer[1]
    return merge(texts)


def merge(texts: Mapping[int, str]) -> bytes:
    """The expositions of several processes (by index) as one: each family once, every sample
    with its process' index as a label, but for the families in ``SHARED_FAMILIES``."""
    families: dict[str, Metric] = {}
    for index, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            shared = family.name in SHARED_FAMILIES
            for sample in family.samples:
                labels = sample.labels if shared else {**sample.labels, PROCESS_LABEL: str(index)}
                merged.samples.append(sample._replace(labels=labels))
    return generate_latest(_Families(families.values()))


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families
