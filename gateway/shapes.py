"""The two ways a request names its images, for ``gateway/intake.py``: ``SINGLE`` for
``POST /classifications`` (one gallery image or one upload) and ``BATCH`` for ``POST /batches``
(up to IMGQ_BATCH_MAX_IMAGES, in order).  A shape says which bodies its route reads, what its
form may hold (``gateway/forms.py``) and how its answers word a refusal; nothing else differs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Final

from gateway.batch_store import MAX_BATCH_IMAGES, BatchLimits
from gateway.forms import Form, Image
from gateway.limits import (
    MAX_FORM_PARTS,
    MAX_IDEMPOTENCY_KEY,
    MAX_REQUEST_BYTES,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_TEXT,
)
from gateway.uploads import Upload
from shared.errors import EmptyBatch, ImgqError, MalformedRequest, PayloadTooLarge

JSON: Final = "application/json"
URLENCODED: Final = "application/x-www-form-urlencoded"
MULTIPART: Final = "multipart/form-data"
FORM_TYPES: Final = (URLENCODED, MULTIPART)
# Room in a job's key (MAX_IDEMPOTENCY_KEY) for the '#<index>' suffix of any image index
# below MAX_BATCH_IMAGES (batch_store.py): '#9999' is 5 characters.
MAX_BATCH_KEY: Final = MAX_IDEMPOTENCY_KEY - len(f"#{MAX_BATCH_IMAGES - 1}")


@dataclass(frozen=True, slots=True)
class Wanted:
    """What a request asks for: a model, its images in order, and where to call back."""

    model: str
    images: list[Image]
    # The client's callback_url, as sent (gateway/callbacks.py checks it); None if it sent none.
    callback_url: str | None = None


def _model(value: object) -> str:
    if not isinstance(value, str):
        raise MalformedRequest("field 'model' is required and must be a string")
    return value


def _callback_url(body: dict[str, object]) -> str | None:
    """A JSON body's callback_url: absent is None, anything but a string (null too) a 400."""
    if "callback_url" not in body:
        return None
    value = body["callback_url"]
    if isinstance(value, str):
        return value
    raise MalformedRequest(
        "field 'callback_url' must be a string: the http or https URL to POST the result to"
    )


def _last(values: list[str]) -> str | None:
    """A text field sent twice counts once, with its last value."""
    return values[-1] if values else None


class Shape(ABC):
    """What one route reads and how it words a refusal (``gateway/forms.py`` asks it of each
    part of a form); ``take`` does the rest."""

    content_types: tuple[str, ...]
    is_batch: bool
    # What a form of this route may hold, for the refusal of any other part.
    _form_has: str

    @abstractmethod
    def from_json(self, body: object, limits: BatchLimits) -> Wanted:
        """What a JSON body asks for."""

    def from_fields(self, fields: dict[str, str]) -> Wanted:
        """What an urlencoded form asks for (only a route that reads one)."""
        raise NotImplementedError

    @abstractmethod
    def from_form(self, form: Form) -> Wanted:
        """What a multipart form asks for."""

    @abstractmethod
    def form_bytes(self, limits: BatchLimits) -> int:
        """The most bytes the whole form may have."""

    @abstractmethod
    def declared_too_large(self, length: int, limit: int) -> str: ...

    @abstractmethod
    def form_too_large(self, limit: int) -> str: ...

    @abstractmethod
    def form_parts(self, limits: BatchLimits) -> int:
        """Parts read before ``too_many_parts`` answers."""

    @abstractmethod
    def too_many_parts(self, limits: BatchLimits) -> ImgqError: ...

    def check_part(self, name: str | None, form: Form) -> None:
        """Refuse a part that may not come next, before it is read."""
        if name not in ("model", "image", "file", "callback_url"):
            raise MalformedRequest(f"unknown form field {name!r}; {self._form_has}")

    def check_images(self, limits: BatchLimits, count: int) -> None:
        """Refuse the ``count``-th image of a form, before it is read."""
        return None  # a shape that allows any refuses none

    def check_upload(self, form: Form) -> None:
        """Refuse an upload (read, not empty) that may not follow ``form``'s parts."""
        return None  # a shape that allows any refuses none

    def check_key(self, key: str | None) -> None:
        """Refuse an Idempotency-Key the shape cannot use."""
        return None  # a shape that allows any refuses none

    def image_key(self, key: str | None, index: int) -> str | None:
        return key

    def about(self, error: ImgqError, index: int, image: Image) -> ImgqError:
        """The error an image's check raised, as this route answers it."""
        return error


class _Single(Shape):
    """``POST /classifications``: one gallery image or one upload."""

    content_types = (JSON, URLENCODED, MULTIPART)
    is_batch = False
    # As openapi.json says: only our parts.  A misnamed file part (say 'upload') gets this
    # answer rather than a puzzling "field 'image' is required".
    _form_has = "a form has 'model', either 'image' or 'file', and optionally 'callback_url'"

    def from_json(self, body: object, limits: BatchLimits) -> Wanted:
        if not isinstance(body, dict):
            raise MalformedRequest('body must be a JSON object like {"model": ..., "image": ...}')
        callback = _callback_url(body)
        return self._one(body.get("model"), body.get("image"), None, "", callback)

    def from_fields(self, fields: dict[str, str]) -> Wanted:
        callback = fields.get("callback_url")
        return self._one(fields.get("model"), fields.get("image"), None, "", callback)

    def from_form(self, form: Form) -> Wanted:
        uploads = [image for image in form.images() if isinstance(image, Upload)]
        return self._one(
            _last(form.text("model")),
            _last(form.text("image")),
            uploads[0] if uploads else None,
            " (or upload a 'file')",
            _last(form.text("callback_url")),
        )

    @staticmethod
    def _one(
        model: object, name: object, upload: Upload | None, suffix: str, callback: str | None
    ) -> Wanted:
        checked = _model(model)
        if upload is not None:
            if name is not None:
                raise MalformedRequest(
                    "send either a gallery 'image' or a 'file' to upload, not both"
                )
            return Wanted(checked, [upload], callback)
        if not isinstance(name, str):
            raise MalformedRequest(f"field 'image' is required and must be a string{suffix}")
        return Wanted(checked, [name], callback)

    def form_bytes(self, limits: BatchLimits) -> int:
        return MAX_REQUEST_BYTES

    def declared_too_large(self, length: int, limit: int) -> str:
        return f"the upload is {length} bytes; the limit is {MAX_UPLOAD_TEXT}"

    def form_too_large(self, limit: int) -> str:
        return f"the upload is more than {MAX_UPLOAD_BYTES} bytes; the limit is {MAX_UPLOAD_TEXT}"

    def form_parts(self, limits: BatchLimits) -> int:
        return MAX_FORM_PARTS + 1

    def too_many_parts(self, limits: BatchLimits) -> ImgqError:
        return MalformedRequest(f"a form has at most {MAX_FORM_PARTS} parts")

    def check_upload(self, form: Form) -> None:
        if any(isinstance(image, Upload) for image in form.images()):
            raise MalformedRequest("send one 'file' per job")


class _Batch(Shape):
    """``POST /batches``: one model and up to IMGQ_BATCH_MAX_IMAGES gallery names and/or
    uploads, in order; a refusal caused by one image names its index."""

    content_types = (JSON, MULTIPART)
    is_batch = True
    _form_has = (
        "a batch form has one 'model', 'file' parts and/or 'image' fields, and optionally one "
        "'callback_url'"
    )

    def from_json(self, body: object, limits: BatchLimits) -> Wanted:
        if not isinstance(body, dict) or not isinstance(body.get("images"), list):
            raise MalformedRequest(
                'body must be a JSON object like {"model": ..., "images": ["name", ...]}'
            )
        images: list[object] = body["images"]
        if len(images) > limits.max_images:
            raise PayloadTooLarge(
                f"the batch has {len(images)} images; a batch has at most {limits.max_images}"
            )
        names: list[Image] = []
        for index, name in enumerate(images):
            if not isinstance(name, str):
                raise MalformedRequest(f"images[{index}] must be a gallery image name (a string)")
            names.append(name)
        callback = _callback_url(body)
        return self._checked(body.get("model"), names, callback)

    def from_form(self, form: Form) -> Wanted:
        models = form.text("model")
        return self._checked(
            models[0] if models else None, form.images(), _last(form.text("callback_url"))
        )

    @staticmethod
    def _checked(model: object, images: list[Image], callback: str | None) -> Wanted:
        checked = _model(model)
        if not images:
            raise EmptyBatch("a batch needs at least one image ('images' in JSON, or 'file' parts)")
        return Wanted(checked, images, callback)

    def form_bytes(self, limits: BatchLimits) -> int:
        return limits.max_bytes

    def declared_too_large(self, length: int, limit: int) -> str:
        return f"the batch is {length} bytes; the limit is {limit} in all"

    def form_too_large(self, limit: int) -> str:
        return f"the batch is more than {limit} bytes in all; send fewer or smaller images"

    def form_parts(self, limits: BatchLimits) -> int:
        # The model, the images, and one more part to tell "too many" from "just enough".
        return limits.max_images + 2

    def too_many_parts(self, limits: BatchLimits) -> ImgqError:
        return PayloadTooLarge(f"a batch has at most {limits.max_images} images")

    def check_part(self, name: str | None, form: Form) -> None:
        super().check_part(name, form)
        if name == "model" and form.text("model"):
            raise MalformedRequest("send one 'model' per batch")
        if name == "callback_url" and form.text("callback_url"):
            raise MalformedRequest("send one 'callback_url' per batch")

    def check_images(self, limits: BatchLimits, count: int) -> None:
        if count > limits.max_images:
            raise self.too_many_parts(limits)

    def check_key(self, key: str | None) -> None:
        if key is not None and len(key) > MAX_BATCH_KEY:
            raise MalformedRequest(
                f"a batch's Idempotency-Key may have at most {MAX_BATCH_KEY} characters (each "
                "image's job is keyed '<key>#<index>')"
            )

    def image_key(self, key: str | None, index: int) -> str | None:
        return None if key is None else f"{key}#{index}"

    def about(self, error: ImgqError, index: int, image: Image) -> ImgqError:
        """The same error (so the same status and code), its message naming the image."""
        name = image if isinstance(image, str) else f"file {image.filename!r}"
        error.message = f"images[{index}] ({name}): {error.message}"
        error.args = (error.message,)
        return error


SINGLE: Final[Shape] = _Single()
BATCH: Final[Shape] = _Batch()
