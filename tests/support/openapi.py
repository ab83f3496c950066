"""Validate response JSON against OpenAI's published OpenAPI description.

The spec lives outside the repository (``../shared/openai-openapi/openapi.json``); tests
that use it skip when it is absent. It says OpenAPI 3.1 but still marks optional-null
fields with 3.0's ``nullable: true``, which a JSON Schema validator ignores, so every
``{..., nullable: true}`` is rewritten into ``anyOf: [{...}, {type: null}]`` first. The
whole document is registered as one Draft 2020-12 resource, so ``#/components/...``
references resolve inside it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

OPENAPI_PATH = Path(__file__).resolve().parents[3] / "shared" / "openai-openapi" / "openapi.json"
_BASE_URI = "urn:openai-openapi"


def _denullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_denullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _denullable(value) for key, value in node.items()}
    if converted.pop("nullable", False) is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@functools.lru_cache(maxsize=1)
def _registry() -> Registry[Any]:
    document = _denullable(json.loads(OPENAPI_PATH.read_text(encoding="utf-8")))
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    return Registry().with_resource(_BASE_URI, resource)


def spec_available() -> bool:
    return OPENAPI_PATH.is_file()


def schema_errors(instance: Any, schema_name: str) -> list[str]:
    """Every way ``instance`` fails ``components.schemas[schema_name]`` (empty: valid)."""
    registry = _registry()
    schema = {"$ref": f"{_BASE_URI}#/components/schemas/{schema_name}"}
    validator = Draft202012Validator(schema, registry=registry)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(instance)
    ]


def check_schema(instance: Any, schema_name: str) -> None:
    """Assert that ``instance`` is a valid ``schema_name``; does nothing without the spec."""
    if not spec_available():
        return
    errors = schema_errors(instance, schema_name)
    assert not errors, f"not a valid {schema_name}:\n" + "\n".join(errors)


requires_spec = pytest.mark.skipif(
    not spec_available(), reason=f"OpenAI OpenAPI spec not found at {OPENAPI_PATH}"
)
