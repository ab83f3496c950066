"""The JSON schema of a whole reply that must be JSON: what an engine that writes
schema-exact JSON (see ``OutputConstraint.json_schema``) is held to."""

from __future__ import annotations

from typing import Any

from .plan import OutputPlan


def call_schema(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """One tool call in the JSON call format: ``{"name": ..., "arguments": {...}}``."""
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def reply_schema(plan: OutputPlan) -> dict[str, Any] | None:
    """The schema of the reply for a plan whose reply is one JSON value (modes
    ``named``, ``required`` and ``json``); None for ``auto``, whose reply may be text."""
    if plan.mode == "json":
        return plan.response_schema or {"type": "object"}
    if plan.mode == "named" and plan.arguments_only:
        return plan.tools[0].parameters
    if plan.mode in ("named", "required") and plan.call_format == "json":
        calls = [call_schema(tool.name, tool.parameters) for tool in plan.tools]
        return calls[0] if len(calls) == 1 else {"anyOf": calls}
    return None
