"""What every wire API reduces a request to: the input of the generation core.

An adapter (chat completions, Responses, Anthropic Messages, legacy completions) turns
its request into one :class:`GenerationSpec` and hands it to
:class:`~picolm_server.generation.core.GenerationCore`; nothing here knows any API's
JSON shapes. Parameter names in errors come from the adapter (``param`` fields), so a
400 names the field as the client wrote it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..prompting.tokens import SplitPrompt
from ..tool_calls.plan import OutputRequest

# A conversation turn in Hugging Face's chat-template conventions:
#   {"role": "system" | "user" | "assistant" | "tool", "content": str,
#    "name"?: str, "tool_call_id"?: str,
#    "tool_calls"?: [{"id": str, "type": "function",
#                     "function": {"name": str, "arguments": <object, or str if not JSON>}}]}
# ``content`` is always a string (text parts already joined); an assistant turn that
# only made calls has content "".
Turn = dict[str, Any]


@dataclass(frozen=True)
class Conversation:
    """Messages, rendered with the model's chat template (tools included).

    ``locate_nul`` names the request field holding a NUL character, for engines that
    cannot take one (see ``EngineAbilities.prompt_accepts_nul``); None: ``param``.
    ``param`` names the field the conversation came from (a prompt too long for the
    context is refused naming it).
    """

    messages: tuple[Turn, ...]
    locate_nul: Callable[[], str] | None = None
    param: str = "messages"


@dataclass(frozen=True)
class RawPrompt:
    """Text given to the model as it is, without a chat template.

    ``parse_special``: marker text in it (``<|im_start|>``) becomes control tokens on
    engines that have them, as llama-server does for /completion; otherwise it is text.
    ``param`` names the field (errors about the prompt name it). ``split``: the prompt
    in template pieces and request pieces (``text`` must be its ``whole``), for prompts
    whose marker text only some of is control tokens (fill-in-the-middle markers around
    the client's text); it overrides ``parse_special``.

    The reply is the model's text exactly: a leading space is kept (a completion of
    "The capital of France is" is " Paris"), and no template end marker stops it.
    """

    text: str
    parse_special: bool = False
    param: str = "prompt"
    split: SplitPrompt | None = None


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters; None means the server's default. ``top_k`` is refused
    (400, naming ``top_k_param``) on engines that cannot honour it, 0 means no cut."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    top_k_param: str = "top_k"


@dataclass(frozen=True)
class GenerationSpec:
    """One generation, as every API reduces it.

    ``output``: tools, tool choice and JSON reply format (see
    :class:`~picolm_server.tool_calls.plan.OutputRequest`); the core turns it into an
    output plan for the engine and template it serves. ``stop``: the client's stop
    strings (for a conversation the template's end markers are added). ``max_tokens``:
    None means the server's default.
    """

    prompt: Conversation | RawPrompt
    output: OutputRequest = field(default_factory=OutputRequest)
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None
