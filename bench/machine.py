"""What the machine was doing: the figures are only as good as the machine was quiet."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores' worth of CPU the whole machine used over ``seconds`` (0 on a quiet one)."""
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    cores = os.cpu_count() or 1
    return cores * (busy1 - busy0) / max(1, total1 - total0)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def raise_open_files_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def _stat(pid: str) -> tuple[int, float, int] | None:
    """(parent pid, CPU seconds, start time in ticks) of a process, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks, int(fields[19])


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores)."""
    busy, _ = _cpu_times()
    return busy / os.sysconf("SC_CLK_TCK")


def _our_cpu_seconds() -> float:
    """CPU seconds of this process and every descendant, alive or already reaped.

    A reaped child's time (and its own reaped children's) is in its parent's cutime/cstime,
    so the sum does not drop when a replica or a model worker exits mid-phase.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        cpu = sum(int(x) for x in fields[11:15]) / ticks  # utime stime cutime cstime
        stats[int(name)] = (int(fields[1]), cpu)
    ours = {os.getpid()}
    grew = True
    while grew:
        before = len(ours)
        ours |= {pid for pid, (ppid, _) in stats.items() if ppid in ours}
        grew = len(ours) > before
    return sum(stats[pid][1] for pid in ours if pid in stats)


class ForeignLoad:
    """How many cores other work used while a phase ran: the machine's busy time minus
    the benchmark's own (its processes, its subprocesses and theirs)."""

    def __init__(self) -> None:
        self._machine = _machine_busy_seconds()
        self._ours = _our_cpu_seconds()
        self._started = time.monotonic()

    def cores(self) -> float:
        machine = _machine_busy_seconds() - self._machine
        ours = _our_cpu_seconds() - self._ours
        return max(0.0, machine - ours) / max(1e-9, time.monotonic() - self._started)


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant of it (a gateway's supervisor and its processes)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(name)
            if stat is not None:
                parents[int(name)] = stat[0]
    tree = [pid]
    for member in tree:
        tree.extend(child for child, parent in parents.items() if parent == member)
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process; 0 if it is gone."""
    stat = _stat(str(pid))
    return 0.0 if stat is None else stat[1]


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process' main thread alone (a replica's event loop,
    beside its inference thread); 0 if it is gone."""
    stat = _stat(f"{pid}/task/{pid}")
    return 0.0 if stat is None else stat[1]


class CpuMeter:
    """CPU time that named groups of processes spend between ``__init__`` and ``per_job``;
    for the groups in ``main_threads``, their main threads' share too."""

    def __init__(self, groups: dict[str, list[int]], main_threads: tuple[str, ...] = ()) -> None:
        self._groups = groups
        self._main_threads = main_threads
        self._before = {name: self._total(pids) for name, pids in groups.items()}
        self._main_before = {name: self._main(groups[name]) for name in main_threads}

    @staticmethod
    def _total(pids: list[int]) -> float:
        return sum(cpu_seconds(pid) for pid in pids)

    @staticmethod
    def _main(pids: list[int]) -> float:
        return sum(main_thread_cpu_seconds(pid) for pid in pids)

    def per_job_ms(self, jobs: int) -> dict[str, float]:
        return {
            name: (self._total(pids) - self._before[name]) * 1000 / max(1, jobs)
            for name, pids in self._groups.items()
        }

    def main_thread_per_job_ms(self, jobs: int) -> dict[str, float]:
        return {
            name: (self._main(self._groups[name]) - self._main_before[name]) * 1000 / max(1, jobs)
            for name in self._main_threads
        }
