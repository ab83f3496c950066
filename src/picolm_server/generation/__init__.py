"""The generation core every wire API shares.

An adapter reduces its request to a :class:`GenerationSpec` (:mod:`.spec`), calls
:meth:`GenerationCore.open` (streaming) or :meth:`GenerationCore.complete`, and turns
the core's events (:mod:`.events`) into its own shapes. :mod:`.prepare` turns a spec
into an engine request, :mod:`.run` applies the server's rules to the engine's output,
:mod:`.stream` hands a started generation to the adapter.
"""

from ..tool_calls.plan import FunctionTool, JSONOutput, NamedTool, OutputRequest, ToolChoiceMode
from .core import GenerationCore, Reply, ToolCall
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
from .spec import Conversation, GenerationSpec, RawPrompt, Sampling, Turn
from .stream import EventStream

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
