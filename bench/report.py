"""The benchmark's one table, as Markdown, and the page around it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

HEADERS = ("measurement", "setup", "result", "latency p50 / p95 / p99 (ms)", "ratio", "target", "")


_OPERATORS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    ">=": ("≥", lambda value, bound: value >= bound),
    "<=": ("≤", lambda value, bound: value <= bound),
    "<": ("<", lambda value, bound: value < bound),
}


@dataclass(frozen=True, slots=True)
class Target:
    """A goal for a measured figure, e.g. ``Target(">=", 0.9, " × bare")``."""

    op: str
    threshold: float
    unit: str = ""

    def __post_init__(self) -> None:
        if self.op not in _OPERATORS:
            raise ValueError(f"unknown operator {self.op!r}; use one of {', '.join(_OPERATORS)}")

    def check(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return _OPERATORS[self.op][1](value, self.threshold)

    def __str__(self) -> str:
        return f"{_OPERATORS[self.op][0]} {self.threshold:g}{self.unit}"


@dataclass(frozen=True, slots=True)
class Row:
    measurement: str
    setup: str
    result: str
    latency: str = ""
    ratio: str = ""
    target: Target | None = None
    # What the target was checked against; None when there is no target or no measurement.
    value: float | None = None
    # Why the verdict may not hold, e.g. other work was using the machine meanwhile.
    caveat: str = ""

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.check(self.value)

    def cells(self) -> tuple[str, ...]:
        verdict = {True: "met", False: "**not met**", None: ""}[self.met]
        if self.target is not None and self.value is None:
            verdict = "not measured"
        elif verdict and self.caveat:
            verdict = f"{verdict} ({self.caveat})"
        target = "" if self.target is None else str(self.target)
        return (
            self.measurement,
            self.setup,
            self.result,
            self.latency,
            self.ratio,
            target,
            verdict,
        )


def escape(cell: str) -> str:
    """A cell that cannot break the table: no pipes, no line breaks."""
    return cell.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, the table {len(headers)}: {row!r}")
    lines = [
        "| " + " | ".join(escape(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def results_table(rows: Sequence[Row]) -> str:
    return markdown_table(HEADERS, [row.cells() for row in rows])


@dataclass(frozen=True, slots=True)
class RunInfo:
    command: str
    date: str
    cores: int
    torch_version: str
    python_version: str
    # What the replicas ran the models with.
    runtime: str
    duration_s: float
    # What else was using the machine: the figures are only as quiet as it was.
    load_average: str


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def document(info: RunInfo, rows: Sequence[Row], notes: Sequence[str], plot: str | None) -> str:
    """``docs/benchmarks.md``: how the table was made, the table, and what it means."""
    met = [row.met for row in rows if row.target is not None]
    parts = [
        "# Benchmarks\n",
        "Measured in one run of `python -m bench` on this repository's reference machine; the "
        "file is rewritten by each run.  The machine is shared and noisy: compare the ratios, "
        "which were measured side by side, more than the absolute figures.\n",
        f"- command: `{info.command}`",
        f"- date: {info.date}; {info.duration_s / 60:.1f} min",
        f"- machine: {info.cores} cores, {_cpu_model()}, no GPU; torch {info.torch_version}, "
        f"Python {info.python_version}; replicas' runtime: {info.runtime}",
        f"- load average before / after the run: {info.load_average}",
        f"- targets met: {sum(m is True for m in met)} of {len(met)}\n",
        results_table(rows),
    ]
    if plot:
        parts.append(f"![throughput]({plot})\n")
    if notes:
        parts.append("## Notes\n")
        parts.append("\n".join(f"- {note}" for note in notes) + "\n")
    return "\n".join(parts)
