"""What the generation core yields: typed events every adapter turns into its own wire
shapes (chat chunks, Responses events, Anthropic content blocks).

A stream is: any number of :class:`TextDelta` and tool-call events, then exactly one
:class:`Finish`. A tool call is :class:`ToolCallStart`, one or more
:class:`ToolCallArguments` (its arguments' JSON text in pieces that join to the whole),
then :class:`ToolCallDone` with the whole call. Calls are only started once they are
complete and valid, so a started call always finishes; text never follows a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Prompt tokens whose computed state was reused (PicoLM's saved prompt states).
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TextDelta:
    """Reply text (or a piece of a JSON reply) that can be sent now."""

    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """A call begins: ``index`` counts calls in this reply from 0."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    """A piece of the call's arguments (compact JSON text)."""

    index: int
    fragment: str


@dataclass(frozen=True)
class ToolCallDone:
    """The call is complete: its arguments match the tool's schema."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Finish:
    """The end. ``stop_sequence``: the client's stop string that ended the reply (None
    when the model ended it, or a template end marker did)."""

    reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None


GenerationEvent = TextDelta | ToolCallStart | ToolCallArguments | ToolCallDone | Finish
