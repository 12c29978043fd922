"""gateway/openapi.json: well-formed, complete against docs/api-contract.md, and strict enough.

Pure unit tests: no servers, no broker.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from gateway.intake import IDEMPOTENCY_KEY
from gateway.views import served_openapi
from shared.metrics import CONTENT_TYPE
from tests.openapi_contract import (
    EVENT_STREAM,
    SPEC_PATH,
    assert_response_matches,
    load_spec,
    resolve_pointer,
    validate_against_schema,
)

# From docs/api-contract.md: path -> method -> response codes the operation must declare.
EXPECTED_OPERATIONS: dict[str, dict[str, set[str]]] = {
    "/info": {"get": {"200", "401"}},
    "/classifications": {
        "post": {"202", "303", "400", "401", "408", "413", "415", "422", "429", "503"},
    },
    "/classifications/{job_id}": {
        "get": {"200", "400", "401", "404", "410", "429", "503"},
        "delete": {"200", "204", "401", "404", "409", "410", "503"},
    },
    "/classifications/{job_id}/events": {"get": {"200", "204", "401", "404", "410", "429", "503"}},
    "/batches": {"post": {"202", "400", "401", "408", "413", "415", "422", "429", "503"}},
    "/batches/{batch_id}": {"get": {"200", "400", "401", "404", "429"}},
    "/status": {"get": {"200", "401"}},
    "/metrics": {"get": {"200", "401"}},
    "/images/{name}": {"get": {"200", "404"}},
    "/healthz": {"get": {"200"}},
    "/readyz": {"get": {"200", "503"}},
    "/openapi.json": {"get": {"200"}},
    "/": {"get": {"200"}},
    "/static/{file}": {"get": {"200"}},
}

EXPECTED_SCHEMAS = {
    "BatchRequest",
    "Batch",
    "Info",
    "ModelInfo",
    "ImageInfo",
    "ClassificationRequest",
    "Job",
    "Label",
    "JobError",
    "JobStatus",
    "Problem",
    "Health",
    "Status",
    "ReplicaStatus",
    "RecentJob",
}

# From the contract's "API tokens": the JSON API needs a token when tokens are configured.
PROTECTED = {
    ("/info", "get"),
    ("/classifications", "post"),
    ("/classifications/{job_id}", "get"),
    ("/classifications/{job_id}", "delete"),
    ("/classifications/{job_id}/events", "get"),
    ("/batches", "post"),
    ("/batches/{batch_id}", "get"),
    ("/status", "get"),
    ("/metrics", "get"),
}

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

JOB_ID = "3f2b8c1e9a7d4c6b8e0f1a2b3c4d5e6f"


def _labels(n: int) -> list[dict[str, Any]]:
    names = ["tabby", "tiger cat", "Egyptian cat", "lynx", "Persian cat", "cougar"]
    return [
        {"label": names[i], "class_index": 281 + i, "score": round(0.5 / (i + 1), 4)}
        for i in range(n)
    ]


def queued_job() -> dict[str, Any]:
    return {
        "job_id": JOB_ID,
        "status": "queued",
        "model": "efficientnet_lite0",
        "model_version": None,
        "image": "cat.jpg",
        "result": None,
        "error": None,
        "queued_at": 1764072000.1,
        "started_at": None,
        "finished_at": None,
        "replica": None,
        "position": 1,
        "reused_from": None,
    }


def succeeded_job() -> dict[str, Any]:
    return {
        **queued_job(),
        "position": None,
        "status": "succeeded",
        "result": _labels(5),
        "started_at": 1764072000.3,
        "finished_at": 1764072000.5,
        "replica": "classifier-1",
        "model_version": "1",
    }


def failed_job() -> dict[str, Any]:
    return {
        **queued_job(),
        "status": "failed",
        "error": {"code": "image_decode_failed", "message": "cannot decode image: truncated"},
        "started_at": 1764072000.3,
        "finished_at": 1764072000.4,
        "replica": "classifier-2",
        "model_version": "1",
    }


def problem(status: int, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": f"urn:imgq:problem:{code}",
        "title": code.replace("_", " ").capitalize(),
        "status": status,
        "detail": f"something about {code}",
        "code": code,
        **extra,
    }


def _walk_refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield where, value
            else:
                yield from _walk_refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_refs(value, f"{where}/{i}")


# --- the document itself ----------------------------------------------------------------------


def test_document_is_json_with_two_space_indent() -> None:
    text = SPEC_PATH.read_text(encoding="utf-8")
    doc = json.loads(text)
    assert text == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def test_openapi_version_info_and_servers() -> None:
    spec = load_spec()
    assert spec["openapi"].startswith("3.1")
    assert spec["info"]["title"] == "imgq"
    assert spec["info"]["version"] == "1"
    assert spec["info"]["description"].strip()
    assert spec["servers"] == [{"url": "/"}]


def test_every_ref_resolves() -> None:
    spec = load_spec()
    refs = list(_walk_refs(spec))
    assert refs, "expected the document to use $ref"
    for where, ref in refs:
        assert ref.startswith("#/"), f"{where}: non-local $ref {ref!r}"
        try:
            resolve_pointer(spec, ref)
        except (KeyError, ValueError, IndexError) as exc:
            pytest.fail(f"{where}: $ref {ref!r} does not resolve ({exc})")


def test_component_schemas_present_and_valid_2020_12() -> None:
    schemas = load_spec()["components"]["schemas"]
    assert set(schemas) >= EXPECTED_SCHEMAS
    for name, schema in schemas.items():
        Draft202012Validator.check_schema(schema)
        for i, example in enumerate(schema.get("examples", [])):
            errors = validate_against_schema({"$ref": f"#/components/schemas/{name}"}, example)
            assert not errors, f"{name} examples[{i}]: {errors}"


def test_inline_schemas_in_paths_and_responses_are_valid_2020_12() -> None:
    spec = load_spec()

    def schemas_in(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "schema" and isinstance(value, dict):
                    yield value
                else:
                    yield from schemas_in(value)
        elif isinstance(node, list):
            for value in node:
                yield from schemas_in(value)

    found = list(schemas_in(spec["paths"])) + list(schemas_in(spec["components"]["responses"]))
    assert found
    for schema in found:
        Draft202012Validator.check_schema(schema)


def test_media_examples_match_their_schemas() -> None:
    spec = load_spec()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            for status, response in op["responses"].items():
                for media_type, media in response.get("content", {}).items():
                    samples = [media["example"]] if "example" in media else []
                    samples += [e["value"] for e in media.get("examples", {}).values()]
                    for sample in samples:
                        if media_type == EVENT_STREAM:  # the schema describes one event
                            assert_response_matches(path, method, int(status), media_type, sample)
                            continue
                        errors = validate_against_schema(media["schema"], sample)
                        assert not errors, f"{method} {path} {status} {media_type}: {errors}"


# --- completeness against docs/api-contract.md ------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXPECTED_OPERATIONS))
def test_path_methods_and_statuses(path: str) -> None:
    paths = load_spec()["paths"]
    assert path in paths, f"{path} missing"
    declared_methods = {m for m in paths[path] if m in HTTP_METHODS}
    assert declared_methods == set(EXPECTED_OPERATIONS[path]), path
    for method, statuses in EXPECTED_OPERATIONS[path].items():
        op = paths[path][method]
        assert op.get("operationId"), f"{method} {path}: no operationId"
        declared = set(op["responses"]) - {"default"}
        missing = statuses - declared
        assert not missing, f"{method} {path}: missing responses {sorted(missing)}"
        extra = declared - statuses
        # Only the asset route may add responses the table does not list (its 404).
        assert not extra or path == "/static/{file}", f"{method} {path}: extra {sorted(extra)}"


def test_no_undocumented_paths() -> None:
    assert set(load_spec()["paths"]) == set(EXPECTED_OPERATIONS)


def _response(path: str, method: str, status: str) -> dict[str, Any]:
    spec = load_spec()
    response = spec["paths"][path][method]["responses"][status]
    while "$ref" in response:
        response = resolve_pointer(spec, response["$ref"])
    assert isinstance(response, dict)
    return response


def test_post_classifications_bodies_and_headers() -> None:
    op = load_spec()["paths"]["/classifications"]["post"]
    content = op["requestBody"]["content"]
    assert op["requestBody"]["required"] is True
    assert content["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ClassificationRequest"
    }
    urlencoded = content["application/x-www-form-urlencoded"]["schema"]
    assert set(urlencoded["properties"]) == {"model", "image", "callback_url"}
    assert set(urlencoded["required"]) == {"model", "image"}
    # Multipart: a model and either a gallery image or an uploaded file (and a callback).
    multipart = content["multipart/form-data"]["schema"]
    assert set(multipart["properties"]) == {"model", "image", "file", "callback_url"}
    assert multipart["required"] == ["model"]
    assert multipart["oneOf"] == [{"required": ["image"]}, {"required": ["file"]}]
    assert multipart["properties"]["file"]["contentMediaType"] == "application/octet-stream"
    assert not validate_against_schema(multipart, {"model": "m", "file": "..."})
    assert validate_against_schema(multipart, {"model": "m", "image": "a", "file": "..."})
    assert validate_against_schema(multipart, {"model": "m"})
    assert _response("/classifications", "post", "202")["headers"]["Location"]["required"]
    assert "Location" in _response("/classifications", "post", "303")["headers"]
    assert _response("/classifications", "post", "503")["headers"]["Retry-After"]["required"]


def test_problem_responses_use_problem_json() -> None:
    spec = load_spec()
    for name in (
        "Problem400",
        "Problem401",
        "Problem404",
        "Problem413",
        "Problem415",
        "Problem422",
        "Problem503",
    ):
        content = spec["components"]["responses"][name]["content"]
        assert set(content) == {"application/problem+json"}, name


def test_job_path_parameters() -> None:
    params = {
        p["name"]: p for p in load_spec()["paths"]["/classifications/{job_id}"]["get"]["parameters"]
    }
    assert params["job_id"]["in"] == "path"
    assert params["job_id"]["schema"]["pattern"] == "^[0-9a-f]{32}$"
    wait = params["wait"]
    assert wait["in"] == "query"
    assert not wait.get("required", False)
    assert wait["schema"]["type"] == "number"
    assert (wait["schema"]["minimum"], wait["schema"]["maximum"]) == (0, 30)


def test_image_media_types() -> None:
    content = _response("/images/{name}", "get", "200")["content"]
    assert {"image/jpeg", "image/png", "image/webp"} <= set(content)
    assert set(_response("/", "get", "200")["content"]) == {"text/html"}


# Optional fields of otherwise strict schemas (none now: every field is always sent).
# Present only in some answers: a 202's note that no replica serves the job's model right now.
OPTIONAL_FIELDS: dict[str, set[str]] = {"Job": {"note"}}


def test_strict_schemas() -> None:
    schemas = load_spec()["components"]["schemas"]
    strict = ("Job", "Label", "JobError", "Info", "ModelInfo", "ImageInfo")
    for name in (*strict, "Status", "ReplicaStatus", "RecentJob"):
        assert schemas[name]["additionalProperties"] is False, name
        optional = OPTIONAL_FIELDS.get(name, set())
        assert set(schemas[name]["required"]) == set(schemas[name]["properties"]) - optional, name
    assert schemas["JobStatus"]["enum"] == ["queued", "started", "succeeded", "failed", "cancelled"]
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "detail", "code"}


# --- the helper accepts what the contract allows and rejects what it does not ------------------


@pytest.mark.parametrize(
    "job", [queued_job(), succeeded_job(), failed_job()], ids=lambda j: j["status"]
)
def test_helper_accepts_valid_jobs(job: dict[str, Any]) -> None:
    assert_response_matches("/classifications/{job_id}", "get", 200, "application/json", job)
    if job["status"] == "queued":
        assert_response_matches(
            "/classifications", "POST", 202, "application/json; charset=utf-8", job
        )


def test_helper_accepts_raw_json_text() -> None:
    raw = json.dumps(succeeded_job()).encode()
    assert_response_matches("/classifications/{job_id}", "get", 200, "application/json", raw)


def test_helper_accepts_valid_problems() -> None:
    assert_response_matches(
        "/classifications",
        "post",
        422,
        "application/problem+json",
        problem(422, "unknown_model", allowed=["efficientnet_lite0"]),
    )
    assert_response_matches(
        "/classifications",
        "post",
        400,
        "application/problem+json",
        problem(400, "malformed_request"),
    )
    assert_response_matches(
        "/classifications", "post", 503, "application/problem+json", problem(503, "queue_full")
    )
    assert_response_matches(
        "/classifications/{job_id}",
        "get",
        404,
        "application/problem+json",
        problem(404, "job_not_found"),
    )
    assert_response_matches(
        "/readyz", "get", 503, "application/problem+json", problem(503, "not_ready")
    )
    # 405 is not per-operation: it falls back to the default problem response.
    assert_response_matches(
        "/classifications",
        "post",
        405,
        "application/problem+json",
        problem(405, "method_not_allowed"),
    )


def test_helper_accepts_other_responses() -> None:
    info = {
        "models": [
            {
                "name": "efficientnet_lite0",
                "title": "EfficientNet-Lite0",
                "input_size": 224,
                "online": True,
                "replicas": 2,
                "version": "1",
                "precision": "fp32",
                "versions": [
                    {
                        "id": "efficientnet_lite0@1",
                        "version": "1",
                        "title": "EfficientNet-Lite0",
                        "input_size": 224,
                        "precision": "bf16",
                        "online": True,
                        "replicas": 2,
                    }
                ],
            }
        ],
        "images": [
            {
                "name": "cat.jpg",
                "url": "/images/cat.jpg",
                "content_type": "image/jpeg",
                "width": 451,
                "height": 300,
            }
        ],
        "max_wait": 30,
        "limits": {
            "max_wait": 30,
            "upload_max_bytes": 10485760,
            "upload_max_pixels": 40000000,
            "batch_max_images": 64,
            "batch_max_bytes": 67108864,
        },
    }
    assert_response_matches("/info", "get", 200, "application/json", info)
    assert_response_matches("/healthz", "get", 200, "application/json", {"status": "ok"})
    assert_response_matches("/readyz", "get", 200, "application/json", {"status": "ready"})
    assert_response_matches("/images/{name}", "get", 200, "image/jpeg", b"\xff\xd8\xff\xe0")
    assert_response_matches("/", "get", 200, "text/html; charset=utf-8", "<!doctype html>")
    assert_response_matches("/static/{file}", "get", 200, "text/css", b"body{}")
    assert_response_matches("/classifications", "post", 303, "text/plain", b"303: See Other")


def _mutated(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    out.update(changes)
    return out


def _without(base: dict[str, Any], key: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    del out[key]
    return out


BAD_JOBS = {
    # A model may have fewer than 5 classes (its own), so 1 to 5 labels; never none.
    "no_labels": _mutated(succeeded_job(), result=[]),
    "six_labels": _mutated(succeeded_job(), result=_labels(6)),
    "unknown_status": _mutated(queued_job(), status="running"),
    "extra_property": _mutated(queued_job(), priority=1),
    "missing_replica": _without(queued_job(), "replica"),
    "bad_job_id": _mutated(queued_job(), job_id="ABC"),
    "score_above_one": _mutated(
        succeeded_job(), result=[{**lbl, "score": 1.5} for lbl in _labels(5)]
    ),
    "class_index_1000": _mutated(
        succeeded_job(), result=[{**lbl, "class_index": 1000} for lbl in _labels(5)]
    ),
    "label_extra_key": _mutated(succeeded_job(), result=[{**lbl, "x": 1} for lbl in _labels(5)]),
    "error_missing_message": _mutated(failed_job(), error={"code": "image_decode_failed"}),
    "timestamp_string": _mutated(queued_job(), queued_at="now"),
    "succeeded_without_result": _mutated(succeeded_job(), result=None),
    "failed_without_error": _mutated(failed_job(), error=None),
    "queued_with_finished_at": _mutated(queued_job(), finished_at=1764072001.0),
    "not_an_object": ["queued"],
}


@pytest.mark.parametrize("name", sorted(BAD_JOBS))
def test_helper_rejects_bad_jobs(name: str) -> None:
    with pytest.raises(AssertionError, match=r"GET /classifications/\{job_id\} -> 200"):
        assert_response_matches(
            "/classifications/{job_id}", "get", 200, "application/json", BAD_JOBS[name]
        )


BAD_PROBLEMS = {
    "missing_code": (400, _without(problem(400, "malformed_request"), "code")),
    "missing_detail": (400, _without(problem(400, "malformed_request"), "detail")),
    "wrong_status_in_body": (400, problem(422, "malformed_request")),
    "wrong_code_for_status": (400, problem(400, "queue_full")),
    "422_without_allowed": (422, problem(422, "unknown_image")),
    "allowed_not_strings": (422, problem(422, "unknown_image", allowed=[1, 2])),
    "type_not_urn": (400, {**problem(400, "malformed_request"), "type": "about:blank"}),
}


@pytest.mark.parametrize("name", sorted(BAD_PROBLEMS))
def test_helper_rejects_bad_problems(name: str) -> None:
    status, body = BAD_PROBLEMS[name]
    with pytest.raises(AssertionError, match="does not match the OpenAPI schema"):
        assert_response_matches(
            "/classifications", "post", status, "application/problem+json", body
        )


def test_helper_rejects_wrong_content_type() -> None:
    with pytest.raises(AssertionError, match="content type 'text/html' is not declared"):
        assert_response_matches("/classifications/{job_id}", "get", 200, "text/html", queued_job())
    with pytest.raises(AssertionError, match="is not declared"):
        assert_response_matches(
            "/classifications", "post", 400, "application/json", problem(400, "malformed_request")
        )


def test_helper_rejects_undeclared_operation_or_status() -> None:
    with pytest.raises(AssertionError, match="path is not in the OpenAPI document"):
        assert_response_matches("/nope", "get", 200, "application/json", {})
    with pytest.raises(AssertionError, match="method is not declared"):
        assert_response_matches("/info", "delete", 200, "application/json", {})


def test_helper_rejects_problem_as_success_and_invalid_json_text() -> None:
    with pytest.raises(AssertionError, match="does not match"):
        assert_response_matches("/info", "get", 200, "application/json", problem(404, "not_found"))
    with pytest.raises(AssertionError, match="not valid JSON"):
        assert_response_matches("/info", "get", 200, "application/json", b"{not json")


# --- the additions: uploads, events, status, metrics, tokens -----------------------------------


def test_bearer_security_on_exactly_the_protected_operations() -> None:
    spec = load_spec()
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "security" not in spec, "tokens are optional: no global requirement"
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            if (path, method) in PROTECTED:
                # A token, or nothing: a gateway without IMGQ_API_TOKENS is open.
                assert op["security"] == [{"bearerAuth": []}, {}], (method, path)
                assert "401" in op["responses"], (method, path)
            else:
                assert "security" not in op, (method, path)
    www = _response("/status", "get", "401")["headers"]["WWW-Authenticate"]
    assert www["required"]


def test_a_gateway_serves_the_security_that_is_true_of_it() -> None:
    # Open: the file as it is.
    assert served_openapi(False) == SPEC_PATH.read_bytes()
    # With tokens: the token alone, on exactly the protected operations; nothing else changes.
    served = json.loads(served_openapi(True))
    expected = copy.deepcopy(load_spec())
    for path, method in PROTECTED:
        expected["paths"][path][method]["security"] = [{"bearerAuth": []}]
    assert served == expected


def test_upload_problems() -> None:
    assert_response_matches(
        "/classifications",
        "post",
        413,
        "application/problem+json",
        problem(413, "payload_too_large"),
    )
    assert_response_matches(
        "/classifications", "post", 413, "application/problem+json", problem(413, "image_too_large")
    )
    assert_response_matches(
        "/classifications",
        "post",
        415,
        "application/problem+json",
        problem(415, "unsupported_media_type"),
    )
    assert_response_matches(
        "/classifications",
        "post",
        422,
        "application/problem+json",
        problem(422, "image_unreadable"),
    )
    with pytest.raises(AssertionError, match="does not match"):
        assert_response_matches(
            "/classifications", "post", 413, "application/problem+json", problem(413, "queue_full")
        )
    assert_response_matches(
        "/status", "get", 401, "application/problem+json", problem(401, "unauthorized")
    )


def test_events_status_and_metrics_media_types() -> None:
    events = _response("/classifications/{job_id}/events", "get", "200")
    assert set(events["content"]) == {"text/event-stream"}
    assert set(_response("/metrics", "get", "200")["content"]) == {"text/plain"}
    assert_response_matches("/metrics", "get", 200, CONTENT_TYPE, b"# HELP x y\n")
    status = {
        "replicas": [
            {
                "replica": "replica-1",
                "models": ["efficientnet_lite0"],
                "jobs_done": 3,
                "busy": False,
                "last_seen": 1764072000.0,
                "restarts": 0,
                "stalled": False,
            }
        ],
        "queue_depth": None,
        "queues": None,
        "broker": {"nodes": [{"name": "127.0.0.1:5672", "running": True, "connected": True}]},
        "jobs_per_second": 0.05,
        "recent": [
            {
                "model": "efficientnet_lite0",
                "status": "queued",
                "queued_at": 1764072000.0,
                "started_at": None,
                "finished_at": None,
            }
        ],
    }
    assert_response_matches("/status", "get", 200, "application/json", status)
    leaky = copy.deepcopy(status)
    leaky["recent"][0]["job_id"] = JOB_ID
    with pytest.raises(AssertionError, match="does not match"):
        assert_response_matches("/status", "get", 200, "application/json", leaky)


# --- what Schemathesis (tests/service/test_schemathesis.py) relies on ------------------------


def test_links_lead_from_a_new_job_to_the_operations_on_it() -> None:
    spec = load_spec()
    operation_ids = {
        op["operationId"]
        for item in spec["paths"].values()
        for method, op in item.items()
        if method in HTTP_METHODS
    }
    links = _response("/classifications", "post", "202")["links"]
    assert {link["operationId"] for link in links.values()} == {
        "getClassification",
        "deleteClassification",
        "streamClassificationEvents",
    }
    for link in [
        *links.values(),
        *_response("/classifications/{job_id}", "delete", "200")["links"].values(),
    ]:
        assert link["operationId"] in operation_ids
        assert link["parameters"] == {"job_id": "$response.body#/job_id"}


def _events(*jobs: dict[str, Any], keepalive: bool = True) -> str:
    text = ": keep-alive\n\n" if keepalive else ""
    for job in jobs:
        text += f"event: job\nid: {job['status']}\ndata: {json.dumps(job)}\n\n"
    return text


def test_event_stream_schema_describes_each_event_and_its_job() -> None:
    media = _response("/classifications/{job_id}/events", "get", "200")["content"][EVENT_STREAM]
    data = media["schema"]["properties"]["data"]
    assert data["contentMediaType"] == "application/json"
    assert data["contentSchema"] == {"$ref": "#/components/schemas/Job"}
    good = _events(queued_job(), succeeded_job())
    assert_response_matches("/classifications/{job_id}/events", "get", 200, EVENT_STREAM, good)


BAD_STREAMS = {
    "job_not_matching_its_schema": _events(_mutated(succeeded_job(), result=_labels(6))),
    "id_not_a_status": _events(queued_job()).replace("id: queued", "id: 7"),
    "another_event_name": _events(queued_job()).replace("event: job", "event: update"),
    "data_not_json": "event: job\nid: queued\ndata: {not json\n\n",
    "no_data": "event: job\nid: queued\n\n",
    "cut_mid_event": _events(queued_job()).rstrip("\n"),
}


@pytest.mark.parametrize("name", sorted(BAD_STREAMS))
def test_helper_rejects_bad_event_streams(name: str) -> None:
    with pytest.raises(AssertionError, match="event"):
        assert_response_matches(
            "/classifications/{job_id}/events", "get", 200, EVENT_STREAM, BAD_STREAMS[name]
        )


def test_415_says_which_content_types_are_allowed() -> None:
    allowed = ["application/json", "application/x-www-form-urlencoded", "multipart/form-data"]
    assert_response_matches(
        "/classifications",
        "post",
        415,
        "application/problem+json",
        problem(415, "unsupported_content_type", allowed=allowed),
    )
    with pytest.raises(AssertionError, match="does not match"):
        assert_response_matches(
            "/classifications",
            "post",
            415,
            "application/problem+json",
            problem(415, "unsupported_content_type"),
        )
    body = load_spec()["paths"]["/classifications"]["post"]["requestBody"]["content"]
    assert sorted(body) == allowed


def test_multipart_form_has_only_its_own_parts() -> None:
    body = load_spec()["paths"]["/classifications"]["post"]["requestBody"]["content"]
    multipart = body["multipart/form-data"]["schema"]
    assert multipart["additionalProperties"] is False
    assert validate_against_schema(multipart, {"model": "m", "image": "a", "extra": "x"})


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("order-42", True),
        ("3f2b8c1e-9a7d-4c6b-8e0f-1a2b3c4d5e6f", True),
        ("a b", True),
        ("~!", True),
        ("x" * 255, True),
        ("", False),
        (" a", False),
        ("a ", False),
        ("a\tb", False),
        ("caf\u00e9", False),
        ("a\x7f", False),
        ("x" * 256, False),
    ],
)
def test_idempotency_key_rule_is_the_servers(key: str, valid: bool) -> None:
    (param,) = (
        p
        for p in load_spec()["paths"]["/classifications"]["post"]["parameters"]
        if p["name"] == "Idempotency-Key"
    )
    in_document = not validate_against_schema(param["schema"], key)
    on_the_server = len(key) <= 255 and IDEMPOTENCY_KEY.fullmatch(key) is not None
    assert in_document == on_the_server == valid
