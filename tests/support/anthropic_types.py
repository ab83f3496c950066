"""Anthropic's own pydantic types (the official ``anthropic`` SDK) as the reference for
every Messages API body and stream event, applied strictly: JSON types exact and no
field the SDK does not know, at any depth."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import anthropic.types as sdk
from pydantic import BaseModel, TypeAdapter

T = TypeVar("T")


def _no_extra(value: Any, where: str) -> None:
    if isinstance(value, BaseModel):
        extra = value.model_extra or {}
        assert not extra, f"{where}: fields the SDK does not know: {sorted(extra)}"
        for name in type(value).model_fields:
            _no_extra(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _no_extra(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_extra(item, f"{where}.{key}")


def strict(kind: Any, data: str | bytes | dict[str, Any]) -> Any:
    """``data`` (JSON text or a decoded document) validated as ``kind``, strictly."""
    text = data if isinstance(data, str | bytes) else json.dumps(data)
    value = TypeAdapter(kind).validate_json(text, strict=True)
    _no_extra(value, kind.__name__ if hasattr(kind, "__name__") else "value")
    return value


def message(data: str | bytes | dict[str, Any]) -> sdk.Message:
    result: sdk.Message = strict(sdk.Message, data)
    return result


def error(data: str | bytes | dict[str, Any]) -> sdk.ErrorResponse:
    result: sdk.ErrorResponse = strict(sdk.ErrorResponse, data)
    return result


def tokens_count(data: str | bytes | dict[str, Any]) -> sdk.MessageTokensCount:
    result: sdk.MessageTokensCount = strict(sdk.MessageTokensCount, data)
    return result


def parse_sse(body: bytes) -> list[tuple[str, str]]:
    """(event name, data) pairs of an event stream; comments (``: ping``) skipped."""
    events: list[tuple[str, str]] = []
    for block in body.decode("utf-8").split("\n\n"):
        name, data = "", []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        if data:
            events.append((name, "\n".join(data)))
    return events


def stream_event(name: str, data: str) -> Any:
    """One stream event, checked against the SDK: the ``event:`` name must be the
    payload's type; ``ping`` and ``error`` are the events outside the union."""
    document = json.loads(data)
    assert document["type"] == name, (name, document)
    if name == "ping":
        assert document == {"type": "ping"}
        return document
    if name == "error":
        return error(data)
    return strict(sdk.RawMessageStreamEvent, data)
