"""Follow jobs until they are final: one long-poll at a time per job, several jobs at once.

Each long-poll passes ``since=<the status we know>``, so the server answers as soon as the job
moves on (queued -> started -> final) and every change can be shown as it happens.  The
threads are daemons: Ctrl-C in the main thread ends the command without waiting for them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from imgq_cli.client import ApiError, Client, Unreachable
from shared.states import JobStatus

# Jobs followed at the same time (each holds one HTTP connection open).
MAX_FOLLOWERS = 8

Job = dict[str, Any]
Outcome = Job | ApiError | Unreachable


def is_final(status: object) -> bool:
    """Final by this client's own list of states; a status it does not know (a newer server)
    is followed until the deadline rather than taken as an answer."""
    try:
        return JobStatus(str(status)).is_final
    except ValueError:
        return False


def wait_all(
    client: Client,
    jobs: Sequence[Job],
    *,
    timeout: float,
    max_wait: float,
    on_change: Callable[[Job], None],
) -> tuple[list[Job], list[str]]:
    """The jobs as they stand once all are final or ``timeout`` seconds have passed, in the
    order given, and a message for each one that could not be followed or is not final.

    Raises ``Unreachable`` if the server stops answering.
    """
    results = list(jobs)
    problems: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    done: queue.SimpleQueue[tuple[int, Outcome]] = queue.SimpleQueue()
    pending = [i for i, job in enumerate(results) if not is_final(job.get("status"))]
    for i in pending:
        todo.put(i)

    def follower() -> None:
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((i, _follow(client, results[i], deadline, max_wait, on_change)))
            except (ApiError, Unreachable) as exc:
                done.put((i, exc))

    for n in range(min(MAX_FOLLOWERS, len(pending))):
        threading.Thread(target=follower, name=f"imgq-follow-{n}", daemon=True).start()
    for _ in pending:
        i, outcome = done.get()
        if isinstance(outcome, Unreachable):
            raise outcome
        if isinstance(outcome, ApiError):
            problems[i] = f"job {results[i].get('job_id')}: {outcome.detail}"
        else:
            results[i] = outcome
    for i, job in enumerate(results):
        if i not in problems and not is_final(job.get("status")):
            problems[i] = (
                f"job {job.get('job_id')} ({job.get('image')}) is still {job.get('status')} "
                f"after {timeout:g} s"
            )
    return results, [problems[i] for i in sorted(problems)]


def _follow(
    client: Client, job: Job, deadline: float, max_wait: float, on_change: Callable[[Job], None]
) -> Job:
    while not is_final(job.get("status")):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        latest = client.job(
            str(job["job_id"]), wait=min(max_wait, max(remaining, 0.1)), since=job.get("status")
        )
        if latest.get("status") != job.get("status"):
            on_change(latest)
        job = latest
    return job
