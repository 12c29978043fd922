"""Session fixtures: a private RabbitMQ node and the service around it, as real processes; and
each test marked with its layer, the folder it sits in."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from compose.broker import INSTALL_HINT, BrokerNode, rabbitmq_installed, start_node
from compose.stack import Stack, wait_http_ok, wait_replicas_online
from tests.cluster import Cluster

# Every client of the suite is 127.0.0.1, so the per-client shares (gateway/clients.py,
# gateway/shares.py) would throttle the load tests; the tests of the limits
# (tests/service/test_client_limits.py, tests/unit/test_intake.py) turn them on for their own
# gateways.
os.environ.setdefault("IMGQ_CLIENT_RATE", "0")
os.environ.setdefault("IMGQ_CLIENT_JOBS", "0")
os.environ.setdefault("IMGQ_CLIENT_WAITS", "100000")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO.parent / "shared" / "imagenet-sample"
REPLICAS = 2

# -- the layers ------------------------------------------------------------------------------

TESTS = REPO / "tests"
# The layers, each a folder of tests/ and a marker of the same name (pyproject.toml says what
# each needs), so that `-m unit` runs one alone, or `-m "not browser"` leaves one out.
LAYERS = ("unit", "service", "browser", "deploy")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""
        if folder in LAYERS:
            item.add_marker(folder)


@dataclass
class Service:
    base_url: str
    broker_url: str
    stack: Stack

    def extra_gateway(self, **env: str) -> str:
        """Another gateway on the same broker and replicas (e.g. with another gallery)."""
        proc, url = self.stack.start_gateway(env=env)
        wait_http_ok(f"{url}/readyz", 30, proc)
        return url


@pytest.fixture(scope="session")
def broker_node() -> Iterator[BrokerNode]:
    if not rabbitmq_installed():
        pytest.fail(f"these tests run a real RabbitMQ node; {INSTALL_HINT}")
    node = start_node()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Service logs: kept in IMGQ_TEST_LOGS when set (CI keeps them as artefacts)."""
    if "IMGQ_TEST_LOGS" in os.environ:
        path = Path(os.environ["IMGQ_TEST_LOGS"])
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def service(broker_node: BrokerNode, log_dir: Path) -> Iterator[Service]:
    """The gateway and two classifier replicas (one inference thread each), serving all models."""
    stack = Stack(broker_node.url, log_dir)
    try:
        for i in range(REPLICAS):
            stack.start_replica(f"replica-{i + 1}", threads=1)
        gateway, base_url = stack.start_gateway()
        wait_http_ok(f"{base_url}/readyz", 60, gateway)
        wait_replicas_online(base_url, REPLICAS, 180)
        yield Service(base_url, broker_node.url, stack)
    finally:
        stack.stop()
        failed = [p for p in stack.processes if p.process.returncode not in (0, None)]
        for proc in failed:
            print(f"--- {proc.name} exited {proc.process.returncode}:\n{proc.log_tail()}")


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    if not (SAMPLE_DIR / "labels.csv").exists():
        pytest.skip(
            f"{SAMPLE_DIR} is absent: the ImageNet sample is reference material beside "
            "the checkout, not part of the repository"
        )
    return SAMPLE_DIR


# -- figures measured by the scenarios, printed at the end of the run ------------------------

FIGURES: list[str] = []


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a measured figure; all are printed in the summary and kept as an artefact."""

    def record(text: str) -> None:
        FIGURES.append(f"{request.node.name}: {text}")

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("figures measured")
    for line in FIGURES:
        terminalreporter.write_line(line)
    artifacts = Path(os.environ.get("IMGQ_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "figures.txt").write_text("\n".join(FIGURES) + "\n")


@pytest.fixture
def cluster(log_dir: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A fresh RabbitMQ node of its own, with no services yet: the test starts what it needs."""
    if not rabbitmq_installed():
        pytest.fail(f"these tests run a real RabbitMQ node; {INSTALL_HINT}")
    node = start_node()
    logs = log_dir / request.node.name
    logs.mkdir(parents=True, exist_ok=True)
    stack = Stack(node.url, logs)
    try:
        yield Cluster(node, stack)
    finally:
        stack.stop(timeout=15)
        node.stop()


# -- the page tests' browser ---------------------------------------------------------------


# Per module, not per session: while Playwright's sync API is open it keeps an event loop
# running in this thread, and the tests that call asyncio.run() would then fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from tests.chromium import launch_browser, require_chromium

    require_chromium()
    with launch_browser() as launched:
        yield launched


@pytest.fixture
def page(browser: Any, service: Service) -> Iterator[Any]:
    """A page on the session's gateway, in a fresh browser context (empty localStorage)."""
    from tests.chromium import new_page

    with new_page(browser, service.base_url) as opened:
        yield opened
