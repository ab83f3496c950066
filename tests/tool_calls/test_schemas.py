"""Client schemas: local references only, bounded size and depth, no in-place loops, and
a validator that can never fetch (picolm_server.tool_calls.schemas)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from picolm_server.errors import InvalidRequestError
from picolm_server.tool_calls.decoding import schema_error
from picolm_server.tool_calls.grammar import (
    MAX_GRAMMAR_REPEAT,
    GrammarUnsupported,
    grammar_schema,
    schema_rules,
)
from picolm_server.tool_calls.schemas import (
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_NODES,
    check_client_schema,
    check_total_size,
    validator,
)

PARAM = "tools[0].function.parameters"


def refused(schema: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        check_client_schema(schema, PARAM)
    assert caught.value.param == PARAM
    assert caught.value.status_code == 400
    return caught.value


def nested_objects(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "file:///etc/passwd"},
        {"$ref": "http://127.0.0.1:9/schema.json"},
        {"type": "object", "properties": {"a": {"items": {"$ref": "https://example.com/x"}}}},
        {"$defs": {"a": {"$ref": "other.json#/a"}}, "$ref": "#/$defs/a"},
        {"properties": {"a": {"$dynamicRef": "http://127.0.0.1:9/meta#x"}}},
        {"properties": {"a": {"$recursiveRef": "file:///tmp/x"}}},
        {"$id": "http://127.0.0.1:9/", "properties": {"a": {"$ref": "s.json"}}},
        {"properties": {"a": {"$id": "file:///tmp/", "$ref": "#/x"}}},
        {"$schema": "http://127.0.0.1:9/metaschema"},
        {"properties": {"a": {"$schema": "file:///tmp/meta.json"}}},
        {"$schema": {"not": "a string"}},
        {"$schema": "http://json-schema.org/draft-04/schema#", "id": "http://127.0.0.1:9/"},
    ],
)
def test_references_outside_the_schema_are_refused(schema: dict[str, Any]) -> None:
    error = refused(schema)
    assert error.code == "invalid_schema"


@pytest.mark.parametrize(
    "schema",
    [
        {"$defs": {"city": {"type": "string"}}, "properties": {"c": {"$ref": "#/$defs/city"}}},
        {"definitions": {"n": {"type": "integer"}}, "items": {"$ref": "#/definitions/n"}},
        {
            "$defs": {"a": {"$anchor": "city", "type": "string"}},
            "properties": {"c": {"$ref": "#city"}},
        },
        {"$schema": "http://json-schema.org/draft-07/schema#", "properties": {"a": {}}},
        {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"},
        # A tree: recursion through a property is fine (each level is a smaller part).
        {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "children": {"type": "array", "items": {"$ref": "#"}},
            },
        },
        # "id" is an ordinary word outside drafts 3 and 4.
        {"type": "object", "properties": {"id": {"type": "string"}}, "default": {"id": "a/b"}},
    ],
)
def test_local_references_are_accepted(schema: dict[str, Any]) -> None:
    assert check_client_schema(schema, PARAM) > 0


def test_a_reference_must_point_at_something() -> None:
    error = refused({"properties": {"a": {"$ref": "#/$defs/missing"}}})
    assert "does not point into the schema" in error.message


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"type": "object", "allOf": [{"$ref": "#"}]},
        {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
        {
            "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}]}, "b": {"not": {"$ref": "#/$defs/a"}}},
            "properties": {"x": {"$ref": "#/$defs/a"}},
        },
    ],
)
def test_schemas_that_refer_to_themselves_in_place_are_refused(schema: dict[str, Any]) -> None:
    error = refused(schema)
    assert "refers to itself" in error.message


def test_depth_is_bounded() -> None:
    # Each level of object nesting is two levels of JSON.
    assert check_client_schema(nested_objects(MAX_SCHEMA_DEPTH // 2 - 1), PARAM)
    error = refused(nested_objects(100))
    assert "nested too deeply" in error.message
    deep_array: dict[str, Any] = {"type": "string"}
    for _ in range(100):
        deep_array = {"type": "array", "items": deep_array}
    refused({"type": "object", "properties": {"x": deep_array}})


def test_a_very_deep_schema_is_refused_without_recursing() -> None:
    schema: dict[str, Any] = {}
    for _ in range(50_000):  # far deeper than Python's stack
        schema = {"not": schema}
    assert "nested too deeply" in refused(schema).message


def test_size_is_bounded_per_schema_and_per_request() -> None:
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5000)}}
    assert "too large" in refused(wide).message
    check_total_size(MAX_SCHEMA_NODES, PARAM)
    with pytest.raises(InvalidRequestError) as caught:
        check_total_size(MAX_SCHEMA_NODES + 1, "response_format.json_schema.schema")
    assert caught.value.param == "response_format.json_schema.schema"


def test_validation_never_fetches(tmp_path: Path) -> None:
    """Even a schema that skipped the checks cannot make the validator read a file."""
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"const": "SECRET-CONTENT"}))
    schema = {"type": "object", "properties": {"a": {"$ref": secret.as_uri()}}}
    import referencing.exceptions

    with pytest.raises(referencing.exceptions.Unresolvable):
        list(validator(schema).iter_errors({"a": 1}))


def test_schema_error_on_an_instance_too_deep_to_check() -> None:
    tree = {"type": "array", "items": {"$ref": "#"}}
    instance: Any = []
    for _ in range(5000):
        instance = [instance]
    problem = schema_error(tree, instance)
    assert problem is not None and "nested too deeply" in problem


# ---- the grammar builder: bounded, and never fetching ----------------------------------


needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="needs the llama extra"
)


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "https://127.0.0.1:9/schema.json"},
        {"type": "object", "properties": {"a": {"$ref": "file:///etc/passwd"}}},
        {"type": "string", "minLength": MAX_GRAMMAR_REPEAT + 1},
        {"type": "array", "minItems": 10**6},
        {"type": "string", "pattern": "^a{100000}$"},
        {"type": "string", "pattern": "^(a{40}){40}$"},
        {
            "type": "object",
            "properties": {str(i): {"type": "string", "maxLength": 10**6} for i in range(30)},
        },
    ],
)
def test_grammar_schema_refuses_what_it_cannot_bound(schema: dict[str, Any]) -> None:
    with pytest.raises(GrammarUnsupported):
        grammar_schema(schema)


def test_grammar_schema_lowers_large_maxima_only() -> None:
    schema = {
        "type": "object",
        "properties": {
            "s": {"type": "string", "maxLength": 10**9, "minLength": 2},
            "a": {"type": "array", "maxItems": 10**6, "items": {"maxLength": 5}},
        },
    }
    copy = grammar_schema(schema)
    assert copy["properties"]["s"] == {
        "type": "string",
        "maxLength": MAX_GRAMMAR_REPEAT,
        "minLength": 2,
    }
    assert copy["properties"]["a"]["maxItems"] == MAX_GRAMMAR_REPEAT
    assert copy["properties"]["a"]["items"] == {"maxLength": 5}
    assert schema["properties"]["s"]["maxLength"] == 10**9  # the original is untouched


@needs_llama
def test_a_huge_maximum_makes_a_small_grammar() -> None:
    _top, rules = schema_rules({"type": "string", "maxLength": 10**6}, "t-")
    assert sum(len(body) for body in rules.values()) < 100_000


@needs_llama
def test_the_converter_never_sees_a_remote_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """llama-cpp-python's converter fetches https:// references unless an assert stops it
    (and asserts vanish under python -O): it must never be handed one."""
    from llama_cpp import llama_grammar

    seen: list[Any] = []
    original = llama_grammar.SchemaConverter.resolve_refs

    def spy(self: Any, schema: dict[str, Any], url: str) -> Any:
        seen.append(schema)
        return original(self, schema, url)

    monkeypatch.setattr(llama_grammar.SchemaConverter, "resolve_refs", spy)
    with pytest.raises(GrammarUnsupported):
        schema_rules({"properties": {"a": {"$ref": "https://127.0.0.1:9/x"}}}, "t-")
    assert seen == []


# ---- what is kept between requests ----------------------------------------------------------


def test_an_accepted_schema_is_checked_against_its_metaschema_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import jsonschema.validators

    checks: list[Any] = []
    original = jsonschema.validators.Draft202012Validator.check_schema

    def counted(schema: Any, *args: Any, **kwargs: Any) -> None:
        checks.append(schema)
        original(schema, *args, **kwargs)

    monkeypatch.setattr(jsonschema.validators.Draft202012Validator, "check_schema", counted)
    schema = {"type": "object", "properties": {"kept-once": {"type": "string"}}}
    first = check_client_schema(schema, PARAM)
    assert check_client_schema(json.loads(json.dumps(schema)), PARAM) == first
    assert len(checks) == 1
    # The same schema with one thing changed is a schema of its own, checked on its own.
    changed = {"type": "object", "properties": {"kept-once": {"type": "nope"}}}
    assert refused(changed).message == refused(changed).message
    assert len(checks) == 3


def test_a_refused_schema_is_refused_every_time_alike() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "nope"}}}
    messages = {refused(schema).message for _ in range(3)}
    assert len(messages) == 1
    assert "'nope' is not valid" in next(iter(messages))


@needs_llama
def test_converted_schemas_are_kept_and_never_shared_mutably() -> None:
    schema = {"type": "object", "properties": {"kept-rules": {"type": "integer"}}}
    top, rules = schema_rules(schema, "r-")
    rules.clear()  # the caller's copy
    assert schema_rules(schema, "r-") == (
        top,
        schema_rules(json.loads(json.dumps(schema)), "r-")[1],
    )
    assert schema_rules(schema, "r-")[1]
    assert all(name.startswith("q-") for name in schema_rules(schema, "q-")[1])
