"""An Anthropic Messages request as the generation core's input.

``system`` becomes a system turn; each message's blocks become turns in the chat
template's conventions: text joined, ``tool_use`` blocks as the assistant's tool calls,
each ``tool_result`` as a tool turn (an error result says so to the model); tools and
``tool_choice`` become the core's output request (``any`` is OpenAI's ``required``,
``tool`` names one function, ``disable_parallel_tool_use`` turns parallel calls off).
What cannot be honoured (extended thinking, server tools, containers, MCP servers, a
prefilled assistant turn) is refused with a 400 naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...errors import InvalidRequestError
from ...generation import (
    Conversation,
    FunctionTool,
    GenerationSpec,
    NamedTool,
    OutputRequest,
    Sampling,
    ToolChoiceMode,
    Turn,
)
from .types import (
    CountTokensRequest,
    MessageParam,
    MessagesRequest,
    TextBlockParam,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlockParam,
    ToolUseBlockParam,
)

# Request fields that ask for something a local model cannot do; sending one back as if
# it had been done would mislead.
_REFUSED = {
    "thinking": "Extended thinking is not supported by this server.",
    "container": "Containers (code execution) are not supported by this server.",
    "mcp_servers": "MCP servers are not supported by this server.",
}


def refuse_unsupported(request: CountTokensRequest) -> None:
    extra = request.model_extra or {}
    for field, message in _REFUSED.items():
        value = extra.get(field)
        if value is None:
            continue
        if field == "thinking" and isinstance(value, dict) and value.get("type") == "disabled":
            continue
        if field == "mcp_servers" and value == []:
            continue
        raise InvalidRequestError(f"{field}: {message}", param=field)
    for index, tool in enumerate(request.tools or []):
        if tool.type not in (None, "custom"):
            raise InvalidRequestError(
                f"tools.{index}: server tools ({tool.type!r}) are not supported by this "
                "server; only custom tools (name, description, input_schema) are.",
                param=f"tools.{index}.type",
            )
        if tool.input_schema is None:
            raise InvalidRequestError(
                f"tools.{index}.input_schema: Field required", param=f"tools.{index}.input_schema"
            )
    if request.messages[-1].role == "assistant":
        last = len(request.messages) - 1
        raise InvalidRequestError(
            f"messages.{last}: a final assistant message (a prefilled reply to continue) is "
            "not supported by this server; end with a user message.",
            param=f"messages.{last}",
        )


def _text(blocks: list[TextBlockParam]) -> str:
    return "\n".join(block.text for block in blocks)


def system_text(system: str | list[TextBlockParam] | None) -> str | None:
    if system is None or isinstance(system, str):
        return system
    return _text(system) if system else None


def tool_result_text(block: ToolResultBlockParam) -> str:
    content = block.content
    text = content if isinstance(content, str) else _text(content or [])
    # The chat template has no place for "this call failed": the model is told in words.
    return f"Error: {text}" if block.is_error else text


def _wrong_role(index: int, block_index: int, block_type: str, role: str) -> InvalidRequestError:
    path = f"messages.{index}.content.{block_index}"
    return InvalidRequestError(
        f"{path}: a {block_type} block cannot be in a {role} message.", param=f"{path}.type"
    )


def message_turns(message: MessageParam, index: int) -> list[Turn]:
    """One Anthropic message as template turns: a user message's tool results are tool
    turns (in order, with its text as user turns between them); a system message (in
    the middle of a conversation) is a system turn."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    if message.role == "system":
        lines: list[str] = []
        for block_index, block in enumerate(message.content):
            if not isinstance(block, TextBlockParam):
                raise _wrong_role(index, block_index, block.type, "system")
            lines.append(block.text)
        return [{"role": "system", "content": "\n".join(lines)}]
    if message.role == "assistant":
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block_index, block in enumerate(message.content):
            if isinstance(block, ToolResultBlockParam):
                raise _wrong_role(index, block_index, "tool_result", "assistant")
            if isinstance(block, ToolUseBlockParam):
                function = {"name": block.name, "arguments": block.input}
                calls.append({"id": block.id, "type": "function", "function": function})
            else:
                texts.append(block.text)
        turn: Turn = {"role": "assistant", "content": "\n".join(texts)}
        if calls:
            turn["tool_calls"] = calls
        return [turn]
    turns: list[Turn] = []
    pending: list[str] = []
    for block_index, block in enumerate(message.content):
        if isinstance(block, ToolUseBlockParam):
            raise _wrong_role(index, block_index, "tool_use", "user")
        if isinstance(block, TextBlockParam):
            pending.append(block.text)
            continue
        if pending:
            turns.append({"role": "user", "content": "\n".join(pending)})
            pending = []
        turns.append(
            {"role": "tool", "content": tool_result_text(block), "tool_call_id": block.tool_use_id}
        )
    if pending or not turns:
        turns.append({"role": "user", "content": "\n".join(pending)})
    return turns


def turns(request: CountTokensRequest) -> tuple[Turn, ...]:
    result: list[Turn] = []
    system = system_text(request.system)
    if system is not None:
        result.append({"role": "system", "content": system})
    for index, message in enumerate(request.messages):
        result += message_turns(message, index)
    return tuple(result)


def output_request(request: CountTokensRequest) -> OutputRequest:
    tools = tuple(
        FunctionTool(
            name=tool.name,
            description=tool.description,
            parameters=tool.input_schema,
            name_param=f"tools.{index}.name",
            parameters_param=f"tools.{index}.input_schema",
        )
        for index, tool in enumerate(request.tools or [])
    )
    choice = request.tool_choice
    mode: ToolChoiceMode | NamedTool | None = None
    parallel: bool | None = None
    if isinstance(choice, ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool):
        parallel = False if choice.disable_parallel_tool_use else None
    if isinstance(choice, ToolChoiceAuto):
        mode = "auto"
    elif isinstance(choice, ToolChoiceAny):
        mode = "required"
    elif isinstance(choice, ToolChoiceTool):
        mode = NamedTool(choice.name)
    elif isinstance(choice, ToolChoiceNone):
        mode = "none"
    return OutputRequest(
        tools=tools, tool_choice=mode, parallel_tool_calls=parallel, tool_choice_param="tool_choice"
    )


def nul_locator(request: CountTokensRequest) -> Callable[[], str]:
    """Where the request holds a NUL character, named as the client wrote it."""

    def locate() -> str:
        if "\0" in (system_text(request.system) or ""):
            return "system"
        for index, message in enumerate(request.messages):
            if "\\u0000" in message.model_dump_json():
                return f"messages.{index}"
        return "tools"

    return locate


def count_spec(request: CountTokensRequest) -> GenerationSpec:
    """The prompt part of a request (what ``count_tokens`` counts)."""
    refuse_unsupported(request)
    return GenerationSpec(
        prompt=Conversation(turns(request), locate_nul=nul_locator(request)),
        output=output_request(request),
    )


def generation_spec(request: MessagesRequest) -> GenerationSpec:
    spec = count_spec(request)
    sampling = Sampling(temperature=request.temperature, top_p=request.top_p, top_k=request.top_k)
    return GenerationSpec(
        prompt=spec.prompt,
        output=spec.output,
        sampling=sampling,
        stop=tuple(request.stop_sequences or ()),
        max_tokens=request.max_tokens,
    )
