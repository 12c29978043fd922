"""``--out FILE``: one record per image, written as its job finishes; read back by
``--resume``.

JSON Lines (one object a line), or CSV when the name ends in ``.csv``.  Each record holds
the image (as the command line named it), the job ID, the model and the version that ran,
the status, the top labels and the error.  A record is flushed as soon as it is written, so
a run that is stopped loses none it reported; a last line it left half written is dropped
when the file is resumed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from imgq import ApiError, Classification, ImgqClientError

FIELDS = ("image", "job_id", "model", "model_version", "status", "labels", "error")
# The same, with the best label and its score in columns of their own.
CSV_FIELDS = (
    *("image", "job_id", "model", "model_version", "status"),
    *("label", "score", "labels", "error"),
)

Record = dict[str, Any]


def record(name: str, model: str, result: Classification, timeout: float | None) -> Record:
    job = result.job
    labels = [{"label": x.label, "score": x.score} for x in (job.result or ())] if job else []
    return {
        "image": name,
        "job_id": job.job_id if job else None,
        "model": job.model if job else model,
        "model_version": job.model_version if job else None,
        "status": result.status,
        "labels": labels,
        "error": error_of(result, timeout),
    }


def error_of(result: Classification, timeout: float | None) -> dict[str, str] | None:
    """Why an image did not succeed: the job's error, the refusal, or the wait running out."""
    job = result.job
    if result.error is not None:
        return {"code": _code(result.error), "message": _message(result.error)}
    if job is None or job.status == "succeeded":
        return None
    if job.error is not None:
        return {"code": job.error.code, "message": job.error.message}
    if not job.is_final:
        after = f" after {timeout:g} s" if timeout is not None else ""
        return {"code": "not_finished", "message": f"still {job.status}{after}"}
    return {"code": job.status, "message": f"the job ended {job.status}"}


def _code(error: ImgqClientError) -> str:
    return error.code if isinstance(error, ApiError) else type(error).__name__


def _message(error: ImgqClientError) -> str:
    return error.detail if isinstance(error, ApiError) else str(error)


class ResultsFile:
    """The file records go to.  ``resume``: keep what is there (``done`` maps each image it
    records to its status) and append; otherwise start it anew."""

    def __init__(self, path: Path, *, resume: bool) -> None:
        self.path = path
        self.csv = path.suffix.lower() == ".csv"
        self.done: dict[str, str] = {}
        if resume and path.exists():
            self.done = self._read_and_trim()
            self._file: IO[str] = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115
        else:
            self._file = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        if self.csv and self._file.tell() == 0:
            self._write_csv(dict(zip(CSV_FIELDS, CSV_FIELDS, strict=True)))

    def write(self, data: Record) -> None:
        if self.csv:
            self._write_csv(_csv_row(data))
        else:
            self._file.write(json.dumps(data, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def _write_csv(self, row: Mapping[str, str]) -> None:
        line = io.StringIO()
        csv.DictWriter(line, CSV_FIELDS, lineterminator="\n").writerow(row)
        self._file.write(line.getvalue())

    def _read_and_trim(self) -> dict[str, str]:
        """The images recorded so far; a last line without its newline (the run was stopped
        while writing it) is cut off, so the next record starts on a line of its own."""
        raw = self.path.read_bytes()
        complete = raw[: raw.rfind(b"\n") + 1]
        if len(complete) != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
        text = complete.decode("utf-8")
        done: dict[str, str] = {}
        if self.csv:
            for row in csv.DictReader(io.StringIO(text)):
                if row.get("image"):
                    done[row["image"]] = row.get("status") or ""
            return done
        for line in text.splitlines():
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and isinstance(data.get("image"), str):
                done[data["image"]] = str(data.get("status"))
        return done


def _csv_row(data: Record) -> dict[str, str]:
    labels = data["labels"]
    best = labels[0] if labels else None
    error = data["error"]
    return {
        "image": data["image"],
        "job_id": data["job_id"] or "",
        "model": data["model"] or "",
        "model_version": data["model_version"] or "",
        "status": data["status"],
        "label": best["label"] if best else "",
        "score": f"{best['score']:.4f}" if best else "",
        "labels": "; ".join(f"{x['label']} ({x['score']:.4f})" for x in labels),
        "error": f"{error['code']}: {error['message']}" if error else "",
    }
