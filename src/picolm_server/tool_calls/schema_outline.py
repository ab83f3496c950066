"""A client JSON schema as the model is shown it when a grammar holds the reply to it:
an outline of the value, in the shape the reply takes.

With a grammar the reply's structure is enforced token by token (keys, their order,
types); the prompt only has to tell the model what goes where. An outline does that in
a third of the tokens of the schema's JSON text, and every prompt token is computed
before the first reply token (about 4 ms each for SmolLM2-135M on 2 cores). For the
3-field person schema: ``{"name": string, "age": integer, "city": string}``, 15 tokens,
against 56 for the schema itself.

An outline never drops what the schema says about values: every keyword is either
written into it (types, keys, optional keys, enums, constants, descriptions, and bounds
such as ``maximum: 10`` in parentheses) or the schema has no outline (None) and is shown
as JSON text instead. Only ``title`` and the ``$schema`` dialect are left out: labels,
not constraints, which generated schemas (pydantic's) repeat for every property.
"""

from __future__ import annotations

import json
from typing import Any

# Keywords that say nothing about the value.
_IGNORED = frozenset({"title", "$schema"})
# Bounds and hints with a plain JSON value, written as "keyword: value" notes.
_NOTES = (
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "default",
    "examples",
)
_OBJECT_KEYWORDS = frozenset({"properties", "required", "additionalProperties"})
_HANDLED = frozenset(
    {"type", "description", "enum", "const", "items", *_OBJECT_KEYWORDS, *_NOTES, *_IGNORED}
)
_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


class _NoOutline(Exception):
    """The schema uses something an outline cannot say."""


def schema_outline(schema: dict[str, Any]) -> str | None:
    """The outline of the values ``schema`` accepts, or None when it has none (any
    keyword an outline cannot write: ``anyOf``, ``$ref``, extra properties, ...).

    The shape comes first on one line; descriptions follow, one line per key (its
    path), as "- key: what it is". Written inside the shape, SmolLM2 copied them into
    the values (``"time": "19:30 }}  # 19:30"``).

    ``schema`` must be a checked client schema (bounded depth; see :mod:`.schemas`)."""
    descriptions: list[str] = []
    try:
        shape = _outline(schema, "", descriptions, optional=False)
    except _NoOutline:
        return None
    return "\n".join([shape, *descriptions])


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _outline(schema: Any, path: str, descriptions: list[str], *, optional: bool) -> str:
    if not isinstance(schema, dict) or not set(schema) <= _HANDLED:
        raise _NoOutline
    description = schema.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise _NoOutline
        text = " ".join(description.split())  # one line
        descriptions.append(f"- {path}: {text}" if path else text)
    if "const" in schema:
        body = _json(schema["const"])
    elif "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not values:
            raise _NoOutline
        body = " | ".join(_json(value) for value in values)
    else:
        body = " | ".join(_typed(schema, kind, path, descriptions) for kind in _types(schema))
    notes = ["optional"] if optional else []
    notes.extend(f"{keyword}: {_json(schema[keyword])}" for keyword in _NOTES if keyword in schema)
    return f"{body} ({'; '.join(notes)})" if notes else body


def _types(schema: dict[str, Any]) -> list[str]:
    declared = schema.get("type")
    if declared is None:
        if set(schema) & _OBJECT_KEYWORDS:
            return ["object"]
        return ["array"] if "items" in schema else ["any"]
    kinds = declared if isinstance(declared, list) else [declared]
    if not kinds or not all(isinstance(kind, str) and kind in _TYPES for kind in kinds):
        raise _NoOutline
    # Keywords of a type the schema does not allow would go unsaid.
    if set(schema) & _OBJECT_KEYWORDS and "object" not in kinds:
        raise _NoOutline
    if "items" in schema and "array" not in kinds:
        raise _NoOutline
    return list(kinds)


def _typed(schema: dict[str, Any], kind: str, path: str, descriptions: list[str]) -> str:
    if kind == "object":
        return _object(schema, path, descriptions)
    if kind == "array":
        items = schema.get("items")
        if items is None:
            return "array"
        return f"[{_outline(items, f'{path}[]', descriptions, optional=False)}, ...]"
    return kind


def _object(schema: dict[str, Any], path: str, descriptions: list[str]) -> str:
    extra = schema.get("additionalProperties")
    if "properties" not in schema and "required" not in schema:
        if extra is None or extra is True:
            return "object"  # any object
        if extra is False:
            return "{}"
        raise _NoOutline  # values of a schema under keys nobody named
    # With listed properties, llama.cpp's converter admits other keys only when
    # additionalProperties is given: without it the listed keys are the whole reply.
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    if extra not in (None, False) or not isinstance(properties, dict):
        raise _NoOutline
    if not isinstance(required, list) or not set(required) <= set(properties):
        raise _NoOutline
    fields = [
        f"{_json(name)}: "
        + _outline(value, _key_path(path, name), descriptions, optional=name not in required)
        for name, value in properties.items()
    ]
    return "{" + ", ".join(fields) + "}"


def _key_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
