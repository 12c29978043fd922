"""Check HTTP responses against gateway/openapi.json (helpers for other tests; no tests here).

Usage::

    from tests.openapi_contract import assert_response_matches

    assert_response_matches("/classifications/{job_id}", "get", 200, "application/json", body)

``body`` is the parsed JSON for JSON media types; for other media types pass ``bytes`` or
``str`` (a media type declared without a schema, such as ``image/jpeg``, only has its content
type checked).  A ``text/event-stream`` body is split into its events, and the schema checks
each one (as Schemathesis reads it, and as OpenAPI 3.2's ``itemSchema`` says outright).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = REPO_ROOT / "gateway" / "openapi.json"
# What Schemathesis is told beside the document: at the repository's root, where a run by hand
# finds it too.
SCHEMATHESIS_CONFIG = REPO_ROOT / "schemathesis.toml"

_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


@functools.cache
def load_spec() -> dict[str, Any]:
    """The OpenAPI document, parsed once per process (treat it as read-only)."""
    with SPEC_PATH.open(encoding="utf-8") as f:
        spec: dict[str, Any] = json.load(f)
    return spec


def resolve_pointer(spec: dict[str, Any], ref: str) -> Any:
    """Resolve a local ``#/a/b`` reference inside ``spec`` (KeyError/ValueError if it does not)."""
    if not ref.startswith("#"):
        raise ValueError(f"only local references are supported, got {ref!r}")
    node: Any = spec
    pointer = ref[1:]
    if not pointer:
        return node
    if not pointer.startswith("/"):
        raise ValueError(f"not a JSON pointer: {ref!r}")
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(token)]
        elif isinstance(node, dict):
            node = node[token]
        else:
            raise KeyError(f"{ref!r}: cannot descend into {type(node).__name__} at {token!r}")
    return node


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


EVENT_STREAM = "text/event-stream"


def parse_event_stream(text: str) -> list[dict[str, str]]:
    """The events of a ``text/event-stream`` body, each as ``{field: value}``; comments (such as
    ``: keep-alive``) are not events.  Fails if the stream stops in the middle of an event."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line:
            if current:
                events.append(current)
                current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            current[name] = f"{current[name]}\n{value}" if name in current else value
    if current:
        raise AssertionError(f"the event stream ends in the middle of an event: {current!r}")
    return events


def _content_errors(schema: dict[str, Any], event: dict[str, str]) -> list[str]:
    """What JSON Schema leaves to the application: a field declared with
    ``contentMediaType: application/json`` and a ``contentSchema`` must parse and match it."""
    errors: list[str] = []
    for name, declared in schema.get("properties", {}).items():
        content_schema = declared.get("contentSchema")
        if name not in event or content_schema is None:
            continue
        if not _is_json(str(declared.get("contentMediaType", ""))):
            continue
        try:
            payload = json.loads(event[name])
        except ValueError as exc:
            errors.append(f"at $.{name}: not valid JSON ({exc})")
            continue
        errors += [f"in $.{name}: {e}" for e in validate_against_schema(content_schema, payload)]
    return errors


def _find_media(content: dict[str, Any], media_type: str) -> dict[str, Any] | None:
    """The declared media type object for ``media_type``: exact, then ``type/*``, then ``*/*``."""
    declared = {key.lower(): value for key, value in content.items()}
    main_type = media_type.split("/", 1)[0]
    for candidate in (media_type, f"{main_type}/*", "*/*"):
        if candidate in declared:
            media: dict[str, Any] = declared[candidate]
            return media
    return None


@functools.cache
def _validator(schema_json: str) -> Draft202012Validator:
    """A validator for one schema whose ``#/components/...`` refs resolve against the spec."""
    root = dict(json.loads(schema_json))
    root["components"] = load_spec()["components"]
    return Draft202012Validator(root)


def validate_against_schema(schema: dict[str, Any], instance: object) -> list[str]:
    """Readable messages for every way ``instance`` breaks ``schema`` (empty when valid)."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors = list(validator.iter_errors(instance))
    if not errors:
        return []
    best = best_match(errors)
    messages = [_describe(best)]
    messages += [_describe(e) for e in errors if e is not best]
    return messages


def _describe(error: Any) -> str:
    message = str(error.message)
    if len(message) > 300:
        message = message[:300] + "..."
    return f"at {error.json_path}: {message}"


def _operation(spec: dict[str, Any], path_template: str, method: str) -> dict[str, Any]:
    paths: dict[str, Any] = spec.get("paths", {})
    if path_template not in paths:
        raise AssertionError(
            f"{method.upper()} {path_template}: path is not in the OpenAPI document "
            f"(known: {', '.join(sorted(paths))})"
        )
    path_item: dict[str, Any] = paths[path_template]
    if "$ref" in path_item:
        path_item = resolve_pointer(spec, path_item["$ref"])
    op = path_item.get(method.lower())
    if not isinstance(op, dict):
        declared = sorted(m.upper() for m in path_item if m in _HTTP_METHODS)
        raise AssertionError(
            f"{method.upper()} {path_template}: method is not declared "
            f"(declared: {', '.join(declared) or 'none'})"
        )
    return op


def _response(spec: dict[str, Any], op: dict[str, Any], status: int, name: str) -> dict[str, Any]:
    responses: dict[str, Any] = op.get("responses", {})
    response: Any = responses.get(str(status))
    if response is None:
        response = responses.get(f"{str(status)[0]}XX")
    if response is None:
        response = responses.get("default")
    if response is None:
        raise AssertionError(
            f"{name}: status {status} is not declared and there is no default response "
            f"(declared: {', '.join(sorted(responses))})"
        )
    seen: set[str] = set()
    while "$ref" in response:
        ref = response["$ref"]
        if ref in seen:
            raise AssertionError(f"{name}: $ref cycle at {ref!r}")
        seen.add(ref)
        try:
            response = resolve_pointer(spec, ref)
        except (KeyError, ValueError, IndexError) as exc:
            raise AssertionError(f"{name}: response $ref {ref!r} does not resolve: {exc}") from exc
    if not isinstance(response, dict):
        raise AssertionError(f"{name}: the response object is not a JSON object")
    return response


def assert_response_matches(
    path_template: str, method: str, status: int, content_type: str, body: object
) -> None:
    """Fail with a readable AssertionError unless the response is what the spec declares.

    Checks that ``status`` is declared for the operation (or a ``default`` response exists),
    that ``content_type`` (parameters such as ``charset`` ignored) is one of the response's
    media types, and that ``body`` validates against that media type's schema.  A response
    declared without ``content`` (e.g. the 303 redirect) accepts any body.
    """
    spec = load_spec()
    name = f"{method.upper()} {path_template} -> {status}"
    op = _operation(spec, path_template, method)
    response = _response(spec, op, status, name)

    content: dict[str, Any] | None = response.get("content")
    if not content:
        return
    media_type = _media_type(content_type)
    media = _find_media(content, media_type)
    if media is None:
        raise AssertionError(
            f"{name}: content type {content_type!r} is not declared "
            f"(declared: {', '.join(sorted(content))})"
        )
    schema: dict[str, Any] | None = media.get("schema")
    if schema is None:
        return
    instance = body
    if isinstance(instance, bytes | bytearray):
        try:
            instance = bytes(instance).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AssertionError(
                f"{name}: body is not UTF-8 text but {media_type} declares a schema"
            ) from exc
    if isinstance(instance, str) and _is_json(media_type):
        # Raw text of a JSON body (e.g. ``await resp.text()``): parse it first.
        try:
            instance = json.loads(instance)
        except ValueError as exc:
            raise AssertionError(
                f"{name}: body is not valid JSON ({exc}): {instance[:200]!r}"
            ) from exc
    if media_type == EVENT_STREAM:
        if not isinstance(instance, str):
            raise AssertionError(f"{name}: pass the raw event stream as bytes or str")
        messages = []
        resolved = _resolved(spec, schema)
        for i, event in enumerate(parse_event_stream(instance)):
            errors = validate_against_schema(schema, event) + _content_errors(resolved, event)
            messages += [f"event #{i}: {error}" for error in errors]
    else:
        messages = validate_against_schema(schema, instance)
    if messages:
        shown = "\n  ".join(messages[:10])
        more = f"\n  ... and {len(messages) - 10} more" if len(messages) > 10 else ""
        raise AssertionError(
            f"{name} ({media_type}): body does not match the OpenAPI schema:\n  {shown}{more}\n"
            f"body: {_preview(body)}"
        )


def _resolved(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = resolve_pointer(spec, schema["$ref"])
    return schema


def _preview(body: object, limit: int = 600) -> str:
    try:
        text = json.dumps(body, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(body)
    return text if len(text) <= limit else text[:limit] + "..."
