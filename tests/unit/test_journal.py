"""The replica's journal of the jobs it runs, as the next process on the same file sees it."""

from __future__ import annotations

from pathlib import Path

import pytest

from classifier_service.journal import Journal, Leftover
from shared.messages import new_job_id


def test_jobs_held_at_death_are_the_next_process_leftover(tmp_path: Path) -> None:
    path = tmp_path / "replica.jobs"
    first = Journal(path)
    assert first.leftover is None  # the first start here
    jobs = [new_job_id(), new_job_id()]
    first.hold(jobs)
    # It dies here (no release): the next process on the same file finds them.
    second = Journal(path)
    assert second.leftover == Leftover(first.life, tuple(jobs))
    assert second.life != first.life


def test_released_jobs_leave_nothing(tmp_path: Path) -> None:
    path = tmp_path / "replica.jobs"
    journal = Journal(path)
    journal.hold([new_job_id(), new_job_id(), new_job_id()])
    journal.hold([new_job_id()])  # a smaller batch after a larger one: no stale tail
    journal.release()
    assert Journal(path).leftover is None


def test_a_shorter_batch_leaves_only_its_own_jobs(tmp_path: Path) -> None:
    path = tmp_path / "replica.jobs"
    journal = Journal(path)
    journal.hold([new_job_id(), new_job_id(), new_job_id()])
    last = new_job_id()
    journal.hold([last])
    leftover = Journal(path).leftover
    assert leftover is not None
    assert leftover.jobs == (last,)


def test_an_unusable_journal_costs_only_the_accounting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "replica.jobs"
    path.mkdir()  # not a file: no process, root or not, can open it for writing
    journal = Journal(path)
    journal.hold([new_job_id()])  # logged, never raised
    journal.release()
    assert journal.leftover is None
    assert "crashes go uncounted" in caplog.text


def test_garbage_in_the_file_is_no_crash(tmp_path: Path) -> None:
    path = tmp_path / "replica.jobs"
    path.write_bytes(b"\xff\xfe not a journal\n../etc/passwd\n")
    assert Journal(path).leftover is None
