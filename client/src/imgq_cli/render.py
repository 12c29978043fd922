"""Plain-text output: aligned tables for people, JSON for programs.  Pure functions."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

Job = Mapping[str, Any]


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()
) -> str:
    """Columns padded to their widest cell (columns in ``right`` right-aligned), two spaces
    apart, no trailing spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def score(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else ""


def outcome(job: Job) -> str:
    """What to show instead of labels when a job has none."""
    error = job.get("error")
    if isinstance(error, Mapping):
        return f"{error.get('code')}: {error.get('message')}"
    return "-"


def jobs_table(jobs: Sequence[Job], top: int = 1) -> str:
    """One row per job with its best label; with ``top`` > 1, one row per label, ranked.
    The label (or the error) comes last, so a long one does not push the other columns."""
    rows: list[list[str]] = []
    if top <= 1:
        for job in jobs:
            labels = job.get("result") or []
            best = labels[0] if labels else None
            rows.append(
                [
                    str(job.get("image")),
                    str(job.get("model")),
                    str(job.get("status")),
                    score(best["score"]) if best else "",
                    str(best["label"]) if best else outcome(job),
                ]
            )
        return table(["IMAGE", "MODEL", "STATUS", "SCORE", "LABEL"], rows, frozenset({3}))
    for job in jobs:
        head = [str(job.get("image")), str(job.get("model")), str(job.get("status"))]
        labels = (job.get("result") or [])[:top]
        if not labels:
            rows.append([*head, "", "", outcome(job)])
        for rank, label in enumerate(labels, start=1):
            cells = head if rank == 1 else ["", "", ""]
            rows.append([*cells, str(rank), score(label["score"]), str(label["label"])])
    return table(["IMAGE", "MODEL", "STATUS", "#", "SCORE", "LABEL"], rows, frozenset({3, 4}))


def submitted_table(jobs: Sequence[Job]) -> str:
    rows = [
        [str(job.get("job_id")), str(job.get("image")), str(job.get("model")), str(job["status"])]
        for job in jobs
    ]
    return table(["JOB", "IMAGE", "MODEL", "STATUS"], rows)


def models_table(models: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [
            str(m.get("name")),
            str(m.get("title")),
            str(m.get("input_size")),
            str(m.get("replicas", 0)),
            versions(m),
        ]
        for m in models
    ]
    return table(["MODEL", "TITLE", "INPUT", "REPLICAS", "VERSIONS"], rows, frozenset({2, 3}))


def versions(model: Mapping[str, Any]) -> str:
    """The versions a model may be asked for by ``name@version``, the one its bare name runs
    marked ``(default)``; ``-`` where no replica has said."""
    default = model.get("version")
    listed = [str(v.get("version")) for v in model.get("versions") or () if v.get("version")]
    if default is not None and str(default) not in listed:
        listed.insert(0, str(default))
    if not listed:
        return "-"
    return ", ".join(f"{v} (default)" if v == str(default) else v for v in listed)


def status_text(
    url: str, ready: bool, reason: str, models: Sequence[Mapping[str, Any]] | None
) -> str:
    lines = [f"gateway {url}: {'ready' if ready else 'NOT READY (' + reason + ')'}"]
    if models is not None:
        rows = [
            [
                str(m.get("name")),
                str(m.get("replicas", 0)),
                "online" if m.get("online") else "offline",
            ]
            for m in models
        ]
        lines += ["", table(["MODEL", "REPLICAS", "STATE"], rows, frozenset({1}))]
    return "\n".join(lines)


def progress(job: Job) -> str:
    """One stderr line for a job that changed state."""
    line = f"{job.get('image')} [{str(job.get('job_id'))[:8]}] {job.get('status')}"
    labels = job.get("result") or []
    if labels:
        line += f": {labels[0]['label']} {score(labels[0]['score'])}"
        if job.get("reused_from"):
            line += " (an earlier result for the same image bytes)"
    elif job.get("error"):
        line += f": {outcome(job)}"
    elif job.get("replica") and job.get("status") != "queued":
        line += f" on {job['replica']}"
    return line


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
