"""What the API answers, as typed, frozen values (built from the JSON by ``from_dict``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imgq.errors import ImgqClientError

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
    # The version of the model that ran the job (None until a server says which).
    model_version: str | None = None
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
            model_version=_optional_str(data.get("model_version")),
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
class ModelVersion:
    """One version of a model on offer: ``id`` (``name@version``) is what a job may name."""

    id: str
    version: str | None
    title: str
    input_size: int
    online: bool
    replicas: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelVersion:
        return cls(
            str(data["id"]),
            _optional_str(data.get("version")),
            str(data.get("title", "")),
            int(data.get("input_size", 0)),
            bool(data.get("online")),
            int(data.get("replicas", 0)),
        )


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    title: str
    input_size: int
    online: bool
    replicas: int
    # The version the bare name runs (None where no replica has said yet), and every version
    # that may be named as ``name@version``.
    version: str | None = None
    versions: tuple[ModelVersion, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Model:
        return cls(
            str(data["name"]),
            str(data.get("title", "")),
            int(data.get("input_size", 0)),
            bool(data.get("online")),
            int(data.get("replicas", 0)),
            _optional_str(data.get("version")),
            tuple(ModelVersion.from_dict(v) for v in data.get("versions") or ()),
        )


# What a server that does not publish its limits in /info allows (the gateway's defaults).
DEFAULT_BATCH_IMAGES = 64
DEFAULT_BATCH_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may carry and how long a long-poll may be held (``/info``'s
    ``limits``); a server that does not say gets the gateway's defaults."""

    max_wait: float = DEFAULT_MAX_WAIT
    batch_max_images: int = DEFAULT_BATCH_IMAGES
    batch_max_bytes: int = DEFAULT_BATCH_BYTES
    upload_max_bytes: int | None = None
    upload_max_pixels: int | None = None

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> Limits:
        limits = info.get("limits")
        given: dict[str, Any] = limits if isinstance(limits, dict) else {}
        return cls(
            max_wait=_positive(given.get("max_wait", info.get("max_wait")), DEFAULT_MAX_WAIT),
            batch_max_images=int(_positive(given.get("batch_max_images"), DEFAULT_BATCH_IMAGES)),
            batch_max_bytes=int(_positive(given.get("batch_max_bytes"), DEFAULT_BATCH_BYTES)),
            upload_max_bytes=_optional_int(given.get("upload_max_bytes")),
            upload_max_pixels=_optional_int(given.get("upload_max_pixels")),
        )


@dataclass(frozen=True, slots=True)
class Info:
    """``GET /info``: the models on offer, the gallery's image names and the limits."""

    models: tuple[Model, ...]
    images: tuple[str, ...]
    limits: Limits
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Info:
        return cls(
            models=tuple(Model.from_dict(m) for m in data.get("models") or ()),
            images=tuple(str(i.get("name")) for i in data.get("images") or ()),
            limits=Limits.from_info(data),
            raw=data,
        )


@dataclass(frozen=True, slots=True)
class Classification:
    """One image of ``classify_many``: ``index`` is its place among the images given and
    ``name`` how it is shown (a path, a gallery name).  ``job`` is the job as it ended (or as
    it stood when the wait ran out); it is None when no job was made, and ``error`` says why
    (the server refused the image, or the file could not be read)."""

    index: int
    name: str
    job: Job | None
    error: ImgqClientError | None = None

    @property
    def ok(self) -> bool:
        return self.job is not None and self.job.status == "succeeded"

    @property
    def status(self) -> str:
        """The job's status, or ``refused`` when there is no job."""
        return self.job.status if self.job is not None else "refused"


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _optional_int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and value > 0 else None


def _positive(value: object, default: float) -> float:
    return float(value) if isinstance(value, int | float) and value > 0 else default
