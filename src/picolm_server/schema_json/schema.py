"""JSON schemas as the JSON writer reads them: references resolved, ``allOf`` merged, the
type made explicit, and for each value what its first character can be and what its
shortest valid form is.

Only the keywords that shape a value are read (``type``, ``properties``, ``required``,
``additionalProperties``, ``items``, ``minItems``/``maxItems``, ``enum``, ``const``,
``anyOf``/``oneOf``, ``minLength``/``maxLength``, ``minimum``/``maximum`` and their
exclusive forms); the server still validates the whole reply against the full schema.
"""

from __future__ import annotations

import json
import math
from typing import Any

Schema = dict[str, Any]

# How deep the writer follows a schema (recursive references included); below that every
# value is written in its shortest valid form.
MAX_DEPTH = 12
_REF_HOPS = 16

JSON_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
_FIRST_CHARS = {
    "object": "{",
    "array": "[",
    "string": '"',
    "integer": "-0123456789",
    "number": "-0123456789",
    "boolean": "tf",
    "null": "n",
}


def literal(value: Any) -> str:
    """A value as the writer writes a fixed part: JSON with the separators models see."""
    return json.dumps(value, ensure_ascii=False)


class SchemaReader:
    """Reads the nodes of one root schema (``$ref`` into ``#/...`` of that root)."""

    def __init__(self, root: Schema) -> None:
        self.root = root

    def resolve(self, node: Any) -> Schema:
        """The node with local references followed and ``allOf`` merged in."""
        if isinstance(node, bool):
            return {} if node else {"not": {}}
        if not isinstance(node, dict):
            return {}
        hops = 0
        while isinstance(node.get("$ref"), str) and hops < _REF_HOPS:
            target = self._pointer(node["$ref"])
            rest = {key: value for key, value in node.items() if key != "$ref"}
            node = {**target, **rest} if isinstance(target, dict) else rest
            hops += 1
        if isinstance(node.get("allOf"), list):
            merged: Schema = {key: value for key, value in node.items() if key != "allOf"}
            for part in node["allOf"]:
                merged = _merge(merged, self.resolve(part))
            node = merged
        resolved: Schema = node
        return resolved

    def _pointer(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}
        target: Any = self.root
        for raw in ref[1:].split("/")[1:] if ref != "#" else []:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                return {}
        return target

    def branches(self, node: Schema) -> list[Schema] | None:
        """The alternatives of a node that is a choice (``anyOf``/``oneOf``, or a list of
        types), each with the node's other keywords; None when it is not one."""
        for key in ("anyOf", "oneOf"):
            options = node.get(key)
            if isinstance(options, list) and options:
                rest = {k: v for k, v in node.items() if k != key}
                return [_merge(rest, self.resolve(option)) for option in options]
        types = node.get("type")
        if isinstance(types, list) and len(types) > 1:
            return [{**node, "type": kind} for kind in types if kind in JSON_TYPES]
        return None

    def kind(self, node: Schema) -> str | None:
        """The node's single JSON type, inferred from its keywords when not declared."""
        declared = node.get("type")
        if isinstance(declared, list):
            declared = declared[0] if len(declared) == 1 else None
        if isinstance(declared, str) and declared in JSON_TYPES:
            return declared
        if "properties" in node or "required" in node or "additionalProperties" in node:
            return "object"
        if "items" in node or "prefixItems" in node:
            return "array"
        if "minLength" in node or "maxLength" in node or "pattern" in node:
            return "string"
        if any(key in node for key in ("minimum", "maximum", "multipleOf")):
            return "number"
        return None

    def options(self, node: Schema) -> list[Any] | None:
        """The fixed values a node allows (``const``, ``enum``), or None."""
        if "const" in node:
            return [node["const"]]
        enum = node.get("enum")
        if isinstance(enum, list) and enum:
            return list(enum)
        return None

    def first_chars(self, node: Any, depth: int = 0) -> str | None:
        """Every character a value of ``node`` can start with; None: any."""
        node = self.resolve(node)
        fixed = self.options(node)
        if fixed is not None:
            return "".join(sorted({literal(value)[0] for value in fixed}))
        branches = self.branches(node)
        if branches is not None:
            if depth > MAX_DEPTH:
                return None
            chars: set[str] = set()
            for branch in branches:
                found = self.first_chars(branch, depth + 1)
                if found is None:
                    return None
                chars.update(found)
            return "".join(sorted(chars))
        kind = self.kind(node)
        return _FIRST_CHARS[kind] if kind is not None else None

    def shortest(self, node: Any, depth: int = 0) -> Any:
        """The shortest valid value of ``node`` the writer can produce (best effort)."""
        node = self.resolve(node)
        fixed = self.options(node)
        if fixed is not None:
            return fixed[0]
        branches = self.branches(node)
        if branches is not None:
            return self.shortest(branches[0], depth + 1)
        kind = self.kind(node)
        if kind == "object":
            properties = node.get("properties") or {}
            required = [key for key in node.get("required") or [] if isinstance(key, str)]
            if depth > MAX_DEPTH:
                return {key: None for key in required}
            return {key: self.shortest(properties.get(key, {}), depth + 1) for key in required}
        if kind == "array":
            count = int(node.get("minItems") or 0)
            return [self.shortest(node.get("items", {}), depth + 1) for _ in range(count)]
        if kind == "string":
            return "x" * int(node.get("minLength") or 0)
        if kind in ("integer", "number"):
            return clamp_number(0, node, integer=kind == "integer")
        if kind == "boolean":
            return False
        return None


def _merge(base: Schema, extra: Schema) -> Schema:
    """Two schemas that must both hold, merged for writing (properties and required
    united, the rest: the later one wins)."""
    merged = {**base, **extra}
    if "properties" in base and "properties" in extra:
        merged["properties"] = {**base["properties"], **extra["properties"]}
    if "required" in base and "required" in extra:
        merged["required"] = list(dict.fromkeys([*base["required"], *extra["required"]]))
    return merged


def clamp_number(value: float, node: Schema, *, integer: bool) -> float | int:
    """``value`` moved into the node's bounds (the nearest integer inside them for
    integers); unchanged when it already is inside."""
    low, high = node.get("minimum"), node.get("maximum")
    ex_low, ex_high = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    result: float = value
    if isinstance(low, (int, float)) and result < low:
        result = low
    if isinstance(high, (int, float)) and result > high:
        result = high
    if integer:
        if isinstance(ex_low, (int, float)) and result <= ex_low:
            result = math.floor(ex_low) + 1
        if isinstance(ex_high, (int, float)) and result >= ex_high:
            result = math.ceil(ex_high) - 1
        if isinstance(low, (int, float)):
            result = max(result, math.ceil(low))
        return int(result if result == int(result) else math.floor(result))
    if isinstance(ex_low, (int, float)) and result <= ex_low:
        result = ex_low + (1 if not isinstance(high, (int, float)) else (high - ex_low) / 2)
    if isinstance(ex_high, (int, float)) and result >= ex_high:
        result = ex_high - 1 if not isinstance(low, (int, float)) else (ex_high + low) / 2
    return result
