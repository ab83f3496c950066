"""A finished generation as Anthropic's ``Message``: content blocks, stop reason, usage
and ids in Anthropic's forms (``msg_...``, ``toolu_...``)."""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .types import ContentBlock, Message, StopReason, TextBlock, ToolUseBlock, Usage

_BASE62 = string.digits + string.ascii_letters

# The core's reasons for ending a reply (``generation.events.FinishReason``).
CoreFinish = Literal["stop", "length", "tool_calls"]


def _random_id(prefix: str) -> str:
    # Anthropic's ids are "msg_01" / "toolu_01" and 22 base62 characters.
    return prefix + "01" + "".join(secrets.choice(_BASE62) for _ in range(22))


def message_id() -> str:
    return _random_id("msg_")


def tool_use_id() -> str:
    return _random_id("toolu_")


def stop_reason(finish: CoreFinish, stop_sequence: str | None) -> StopReason:
    """``end_turn`` when the model ended its turn, ``stop_sequence`` when one of the
    client's stop sequences did, ``max_tokens`` when the budget (or context) ran out."""
    if finish == "tool_calls":
        return "tool_use"
    if finish == "length":
        return "max_tokens"
    return "stop_sequence" if stop_sequence is not None else "end_turn"


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments (JSON text of an object, validated by the core) as ``input``."""
    value = json.loads(arguments)
    if not isinstance(value, dict):  # the core only makes calls with object arguments
        raise ValueError("tool arguments must be a JSON object")
    return value


@dataclass(frozen=True)
class Call:
    name: str
    arguments: str


def message(
    *,
    model: str,
    text: str,
    calls: Sequence[Call],
    finish: CoreFinish,
    stop_sequence: str | None,
    usage: Usage,
) -> Message:
    content: list[ContentBlock] = [TextBlock(text=text)] if text else []
    content += [
        ToolUseBlock(id=tool_use_id(), name=call.name, input=tool_input(call.arguments))
        for call in calls
    ]
    return Message(
        id=message_id(),
        content=content,
        model=model,
        stop_reason=stop_reason(finish, stop_sequence),
        stop_sequence=stop_sequence,
        usage=usage,
    )
