"""A replica's health file, its two readings (liveness, readiness) and the stall clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from classifier_service import health, healthcheck
from classifier_service.health import Health, Progress, liveness, readiness


def _write(path: Path, **changes: object) -> Health:
    report = Health(
        **{
            "at": time.time(),
            "interval": 5.0,
            "ready": True,
            "stalled": False,
            "reason": "consuming",
            **changes,
        }  # type: ignore[arg-type]
    )
    health.write(path, report)
    return report


def test_a_fresh_report_of_a_consuming_replica_is_alive_and_ready(tmp_path: Path) -> None:
    path = tmp_path / "alive"
    written = _write(path)
    assert health.read(path) == written
    assert liveness(path) is None
    assert readiness(path) is None


def test_cut_off_from_the_broker_is_alive_but_not_ready(tmp_path: Path) -> None:
    path = tmp_path / "alive"
    _write(path, ready=False, reason="not connected to the broker")
    assert liveness(path) is None
    assert readiness(path) == "not connected to the broker"


def test_stalled_is_not_alive(tmp_path: Path) -> None:
    path = tmp_path / "alive"
    _write(path, stalled=True, reason="holding 1 deliveries, no progress for 200 s")
    assert liveness(path) == "stalled: holding 1 deliveries, no progress for 200 s"
    assert readiness(path) is not None


def test_a_report_its_loop_stopped_writing_is_not_alive(tmp_path: Path) -> None:
    path = tmp_path / "alive"
    written = _write(path, interval=5.0)
    # Three missed writes, and never under the floor that absorbs a loaded machine's hiccups.
    assert liveness(path, now=written.at + 14) is None
    assert "its loop is stuck or gone" in (liveness(path, now=written.at + 16) or "")
    _write(path, interval=0.5)
    assert liveness(path, now=time.time() + health.MIN_STALE_SECONDS - 1) is None


@pytest.mark.parametrize("content", [None, "", "not json", "[]", '{"at": "now"}'])
def test_no_file_or_not_a_report_is_not_alive(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "alive"
    if content is not None:
        path.write_text(content)
    assert liveness(path) is not None
    assert readiness(path) is not None


def test_the_health_check_command_exits_by_the_reading_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "alive"
    monkeypatch.setenv("IMGQ_HEALTH_FILE", str(path))
    _write(path, ready=False, reason="not connected to the broker")
    assert healthcheck.main([]) == 0
    assert healthcheck.main(["--live"]) == 0
    assert healthcheck.main(["--ready"]) == 1
    assert "not ready: not connected to the broker" in capsys.readouterr().err
    _write(path, stalled=True, reason="stuck")
    assert healthcheck.main([]) == 1
    assert "unhealthy: stalled: stuck" in capsys.readouterr().err


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_holding_work_without_progress_past_the_limit_is_a_stall() -> None:
    clock, held = Clock(), [0]
    progress = Progress(lambda: held[0], 60, clock)
    clock.now = 1000
    assert progress.stalled_for() is None  # idle is never stalled, however long
    held[0] = 2
    progress.moved()  # work taken up: the clock starts
    clock.now = 1059
    assert progress.stalled_for() is None
    clock.now = 1061
    assert progress.stalled_for() == 61
    progress.moved()  # a batch settled
    assert progress.stalled_for() is None
