"""Hypothesis strategies drawn from JSON Schemas (OpenAI's OpenAPI description, or any
schema with ``$defs``), for the fuzz tests of ``tests/hostile``, and the checks every
fuzzed answer must pass."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import strategies as st

# 5xx the server documents for engine trouble; anything else is a defect.
DOCUMENTED_5XX = {
    500: {"engine_error", "invalid_model_output"},
    503: {"server_shutting_down", "too_many_connections"},
    504: {"timeout"},
}
# Deep enough to reach message content parts and tool parameters, shallow enough to
# keep each body small.
MAX_DEPTH = 5

FINITE = st.floats(allow_nan=False, allow_infinity=False)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | FINITE | st.text(max_size=20)
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


class SpecStrategies:
    """Hypothesis strategies for schemas of the OpenAPI document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = self.document
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema

    def properties(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Every property of an object schema, through ``allOf``."""
        schema = self.resolve(schema)
        found = dict(schema.get("properties", {}))
        for part in schema.get("allOf", []):
            found.update(self.properties(part))
        return found

    def value(self, schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
        """A value the schema allows (mostly), or another JSON value (sometimes)."""
        hostile = ANY_JSON if depth < MAX_DEPTH else JSON_SCALARS
        return st.one_of(self._typed(schema, depth), self._typed(schema, depth), hostile)

    def _typed(self, schema: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
        schema = self.resolve(schema)
        if depth >= MAX_DEPTH:
            return JSON_SCALARS
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        if "const" in schema:
            return st.just(schema["const"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return st.one_of([self._typed(option, depth + 1) for option in schema[key]])
        kind = schema.get("type")
        if isinstance(kind, list):
            return st.one_of([self._typed({**schema, "type": k}, depth) for k in kind])
        if kind == "string":
            return st.text(max_size=40)
        if kind == "integer":
            low, high = schema.get("minimum"), schema.get("maximum")
            in_range = st.integers(min_value=low, max_value=high)
            return in_range | st.integers() if low is None else in_range
        if kind == "number":
            low, high = schema.get("minimum"), schema.get("maximum")
            in_range_number = st.floats(min_value=low, max_value=high, allow_infinity=False)
            return in_range_number.filter(lambda x: x == x) | st.integers(-3, 3)
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        if kind == "array":
            items = schema.get("items", {})
            return st.lists(self._typed(items, depth + 1), max_size=3)
        if kind == "object" or "properties" in schema or "allOf" in schema:
            return self.obj(schema, depth + 1)
        return ANY_JSON

    def obj(self, schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
        properties = self.properties(schema)
        required = set(self.resolve(schema).get("required", []))
        for part in self.resolve(schema).get("allOf", []):
            required |= set(self.resolve(part).get("required", []))
        values = {name: self._typed(sub, depth) for name, sub in properties.items()}
        return st.fixed_dictionaries(
            {name: values[name] for name in properties if name in required},
            optional={name: values[name] for name in properties if name not in required},
        )


def assert_envelope(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if response.status_code >= 500:
        assert error["code"] in DOCUMENTED_5XX.get(response.status_code, set()), error


def assert_well_formed(response: httpx.Response) -> None:
    if response.status_code >= 400:
        assert_envelope(response)
        return
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line for line in response.text.split("\n") if line]
        assert all(line.startswith("data: ") for line in events), events
        for line in events[:-1]:
            payload = json.loads(line[len("data: ") :])
            if "error" in payload:
                assert set(payload["error"]) == {"message", "type", "param", "code"}
        assert events[-1] == "data: [DONE]" or "error" in json.loads(events[-1][6:])
    else:
        assert isinstance(response.json(), dict)
