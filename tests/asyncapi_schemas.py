"""docs/asyncapi.yaml's message schemas, for checking real messages and examples against them."""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tests.conftest import REPO

ASYNCAPI = REPO / "docs" / "asyncapi.yaml"


@cache
def asyncapi_document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    return loaded


def _validator(schema_name: str) -> Draft7Validator:
    resource = Resource.from_contents(asyncapi_document(), default_specification=DRAFT7)
    registry: Registry[Any] = Registry().with_resource("urn:imgq:asyncapi", resource)
    schema = {"$ref": f"urn:imgq:asyncapi#/components/schemas/{schema_name}"}
    return Draft7Validator(schema, registry=registry)


def schema_errors(schema_name: str, body: bytes | dict[str, Any]) -> list[str]:
    """Why ``body`` (JSON bytes or a parsed object) does not match the named schema."""
    instance = orjson.loads(body) if isinstance(body, bytes) else body
    return [error.message for error in _validator(schema_name).iter_errors(instance)]


def schema_properties(schema_name: str) -> set[str]:
    """The property names the named schema declares."""
    return set(asyncapi_document()["components"]["schemas"][schema_name]["properties"])
