"""Check Responses API objects and stream events against both references: OpenAI's
published spec (tests/support/openapi.py) and the openai-python SDK's pydantic types."""

from __future__ import annotations

import functools
import json
from typing import Any

from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.support.openapi import OPENAPI_PATH, check_schema, spec_available

_EVENT = TypeAdapter(ResponseStreamEvent)


@functools.lru_cache(maxsize=1)
def _event_schemas() -> dict[str, str]:
    """Each stream event type's own schema, from the members of ``ResponseStreamEvent``
    (checking against the member, not the union, names what is wrong)."""
    schemas = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))["components"]["schemas"]
    union = schemas["ResponseStreamEvent"]
    members = union.get("anyOf") or union.get("oneOf") or []
    names: dict[str, str] = {}
    for member in members:
        name = member["$ref"].rsplit("/", 1)[-1]
        for kind in schemas[name]["properties"]["type"].get("enum", []):
            names[kind] = name
    return names


def check_response(response: dict[str, Any]) -> Response:
    """A response object: valid for the spec, parsed by the SDK (returned)."""
    check_schema(response, "Response")
    return Response.model_validate(response)


def check_event(event: dict[str, Any]) -> Any:
    """A stream event: valid for the spec, parsed by the SDK as its own event type."""
    if spec_available():
        check_schema(event, _event_schemas()[event["type"]])
    parsed = _EVENT.validate_python(event)
    assert parsed.type == event["type"]
    return parsed


def sse_events(body: str) -> list[dict[str, Any]]:
    """The events of an SSE body, checking that each one's ``event:`` names its type."""
    events = []
    for block in body.strip().split("\n\n"):
        lines = [line for line in block.split("\n") if not line.startswith(":")]
        if not lines:
            continue
        name = next(line[len("event: ") :] for line in lines if line.startswith("event: "))
        data = json.loads(
            next(line[len("data: ") :] for line in lines if line.startswith("data: "))
        )
        assert data["type"] == name
        events.append(data)
    return events
