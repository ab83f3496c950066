"""The generation core every wire API shares.

An adapter reduces its request to a :class:`GenerationSpec` (:mod:`.spec`), calls
:meth:`GenerationCore.open` (streaming) or :meth:`GenerationCore.complete`, and turns
the core's events (:mod:`.events`) into its own shapes. :mod:`.prepare` turns a spec
into an engine request, :mod:`.run` applies the server's rules to the engine's output,
:mod:`.stream` hands a started generation to the adapter.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core import GenerationCore, ModelCore, Reply, ToolCall
from .events import (
    Finish,
    FinishReason,
    GenerationEvent,
    TextDelta,
    ToolCallArguments,
    ToolCallDone,
    ToolCallStart,
    Usage,
)

if TYPE_CHECKING:
    from ..tool_calls.plan import (
        FunctionTool,
        JSONOutput,
        NamedTool,
        OutputRequest,
        ToolChoiceMode,
    )
    from .spec import Conversation, GenerationSpec, RawPrompt, Sampling, Turn
    from .stream import EventStream

# Imported with their first use (by a wire API, with its first request): the request
# path is not needed before the server is ready.
_LAZY = {
    **dict.fromkeys(
        ("FunctionTool", "JSONOutput", "NamedTool", "OutputRequest", "ToolChoiceMode"),
        "..tool_calls.plan",
    ),
    **dict.fromkeys(("Conversation", "GenerationSpec", "RawPrompt", "Sampling", "Turn"), ".spec"),
    "EventStream": ".stream",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Conversation",
    "EventStream",
    "Finish",
    "FinishReason",
    "FunctionTool",
    "GenerationCore",
    "GenerationEvent",
    "GenerationSpec",
    "JSONOutput",
    "ModelCore",
    "NamedTool",
    "OutputRequest",
    "RawPrompt",
    "Reply",
    "Sampling",
    "TextDelta",
    "ToolCall",
    "ToolCallArguments",
    "ToolCallDone",
    "ToolCallStart",
    "ToolChoiceMode",
    "Turn",
    "Usage",
]
