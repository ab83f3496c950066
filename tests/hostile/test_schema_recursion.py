"""Hostile schemas, class "recursion and size": deeply nested, self-referencing or huge
tool and response schemas get a 400 naming the parameter on both engines, streamed or
not; the same keep-alive connection keeps working and the server logs no traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from picolm_server.tool_calls.schemas import MAX_SCHEMA_NODES
from tests.support.both_engines import ENGINES, Target, target_for

TOOL_PARAM = "tools[0].function.parameters"
RESPONSE_PARAM = "response_format.json_schema.schema"


def nested_objects(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def nested_arrays(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return {"type": "object", "properties": {"a": schema}}


SCHEMAS: dict[str, dict[str, Any]] = {
    "depth-100-objects": nested_objects(100),
    "depth-100-arrays": nested_arrays(100),
    "ref-to-root": {"$ref": "#"},
    "ref-to-root-in-allof": {"type": "object", "allOf": [{"$ref": "#"}]},
    "mutual-defs": {
        "type": "object",
        "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"anyOf": [{"$ref": "#/$defs/a"}]}},
        "properties": {"x": {"$ref": "#/$defs/a"}},
    },
    # Compact on the wire (the stand-in's server takes 64 KB bodies), too many values.
    "very-wide": {
        "type": "object",
        "properties": {str(i): {} for i in range(MAX_SCHEMA_NODES + 100)},
    },
    "huge-enum": {
        "type": "object",
        "properties": {"a": {"enum": list(range(MAX_SCHEMA_NODES + 100))}},
    },
}


@pytest.fixture(params=ENGINES)
def target(request: pytest.FixtureRequest) -> Target:
    return target_for(request)


@pytest.fixture
def client(target: Target) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=target.server.base_url, headers=target.headers, timeout=120) as http:
        yield http


def local_port(response: httpx.Response) -> int:
    stream = response.extensions["network_stream"]
    address = stream.get_extra_info("client_addr")
    return int(address[1])


def hostile_body(target: Target, name: str, where: str, stream: bool) -> dict[str, Any]:
    schema = SCHEMAS[name]
    body: dict[str, Any] = {
        "model": target.model,
        "messages": [{"role": "user", "content": "hi [[reply:{}]]"}],
        "max_tokens": 8,
        "stream": stream,
    }
    if where == "tool":
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
        body["tool_choice"] = "required"
    else:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "r", "schema": schema},
        }
    return body


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("where", ["tool", "response_format"])
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_recursive_and_huge_schemas_are_refused_cleanly(
    target: Target,
    client: httpx.Client,
    name: str,
    where: str,
    stream: bool,
) -> None:
    log_start = len(target.server.log())
    response = client.post("/v1/chat/completions", json=hostile_body(target, name, where, stream))
    assert response.status_code == 400, response.text[:2000]
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == (TOOL_PARAM if where == "tool" else RESPONSE_PARAM)
    assert error["code"] == "invalid_schema"
    assert len(error["message"]) < 500
    first_port = local_port(response)

    # The same connection is still open and served (without a generation: each of
    # these cases would otherwise cost a generation on a slow machine).
    again = client.get("/v1/models")
    assert again.status_code == 200, again.text
    assert again.json()["data"][0]["id"] == target.model
    assert local_port(again) == first_port
    assert "Traceback" not in target.server.log()[log_start:]


def test_a_recursive_tree_schema_is_accepted(target: Target) -> None:
    """Recursion through a property (a tree) is a schema a grammar can express: it is
    served, and a reply that does not fit fails cleanly, never with a crash."""
    tree = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#"}},
        },
        "required": ["name"],
    }
    arguments = json.dumps({"name": "a", "children": [{"name": "b"}]})
    log_start = len(target.server.log())
    response = httpx.post(
        f"{target.server.base_url}/v1/chat/completions",
        headers=target.headers,
        timeout=300,
        json={
            "model": target.model,
            "messages": [{"role": "user", "content": f"Make a tree. [[reply:{arguments}]]"}],
            "tools": [{"type": "function", "function": {"name": "tree", "parameters": tree}}],
            "tool_choice": "required",
            "max_tokens": 48,
            "temperature": 0,
        },
    )
    assert response.status_code in (200, 500), response.text
    if response.status_code == 500:
        assert response.json()["error"]["code"] == "invalid_model_output"
    else:
        call = response.json()["choices"][0]["message"]["tool_calls"][0]
        assert "name" in json.loads(call["function"]["arguments"])
    assert "Traceback" not in target.server.log()[log_start:]
