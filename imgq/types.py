"""What the API answers, as typed, frozen values (built from the JSON by ``from_dict``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A job in one of these states will not change again.
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Label:
    label: str
    class_index: int
    score: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Label:
        return cls(str(data["label"]), int(data["class_index"]), float(data["score"]))


@dataclass(frozen=True, slots=True)
class JobError:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    status: str
    model: str
    image: str
    # The top labels, best first, once the job succeeded.
    result: tuple[Label, ...] | None = None
    error: JobError | None = None
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    replica: str | None = None
    # Set when the answer is an earlier job's result for the same model and image bytes.
    reused_from: str | None = None
    # 1 = the next job a replica takes, while queued.
    position: int | None = None
    # The JSON as the server sent it (fields a newer server adds are here too).
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def label(self) -> Label | None:
        """The best label, if the job succeeded."""
        return self.result[0] if self.result else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        result = data.get("result")
        error = data.get("error")
        return cls(
            job_id=str(data["job_id"]),
            status=str(data["status"]),
            model=str(data.get("model", "")),
            image=str(data.get("image", "")),
            result=None if result is None else tuple(Label.from_dict(x) for x in result),
            error=None if error is None else JobError(str(error["code"]), str(error["message"])),
            queued_at=data.get("queued_at"),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            replica=data.get("replica"),
            reused_from=data.get("reused_from"),
            position=data.get("position"),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    model: str
    # In the order the images were given; jobs gone since (deleted, expired) are in ``gone``.
    jobs: tuple[Job, ...]
    # Jobs in each status, every status named.
    counts: dict[str, int]
    # True once every job is final.
    done: bool
    gone: tuple[str, ...] = ()
    created_at: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Batch:
        return cls(
            batch_id=str(data["batch_id"]),
            model=str(data.get("model", "")),
            jobs=tuple(Job.from_dict(job) for job in data.get("jobs") or ()),
            counts={str(k): int(v) for k, v in (data.get("counts") or {}).items()},
            done=bool(data.get("done")),
            gone=tuple(str(x) for x in data.get("gone") or ()),
            created_at=data.get("created_at"),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    title: str
    input_size: int
    online: bool
    replicas: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Model:
        return cls(
            str(data["name"]),
            str(data.get("title", "")),
            int(data.get("input_size", 0)),
            bool(data.get("online")),
            int(data.get("replicas", 0)),
        )
