"""A Responses request reduced to what the generation core takes.

Pure functions: which parameters are refused (:func:`refuse_unsupported`), the input as
stored conversation items (:func:`input_items`), those items and the instructions as a
:class:`~picolm_server.generation.GenerationSpec` (:func:`generation_spec`), and the
response object a request starts from (:func:`initial_response`). Every error names the
parameter as the client wrote it.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from ...config.settings import GenerationDefaults
from ...errors import InvalidRequestError
from ...generation import (
    Conversation,
    FunctionTool,
    GenerationSpec,
    JSONOutput,
    NamedTool,
    OutputRequest,
    Sampling,
    ToolChoiceMode,
    Turn,
)
from ...http.json_text import call_arguments
from .types import (
    AllowedToolsChoice,
    ContentPart,
    FormatJSONObject,
    FormatJSONSchema,
    FormatText,
    FunctionToolEcho,
    InputItem,
    NamedFunctionChoice,
    ResponseObject,
    ResponsesRequest,
    TextConfig,
    ToolChoiceEcho,
    ToolChoiceObject,
    ToolParam,
)

# What ``include`` may ask for: encrypted reasoning is trivially included, as the models
# served here produce no reasoning items.
SUPPORTED_INCLUDES = frozenset({"reasoning.encrypted_content"})
MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")

Item = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


# ---- refusals -------------------------------------------------------------------------


def refuse_unsupported(request: ResponsesRequest) -> None:
    """Refuse what would mislead if ignored; harmless parameters (``user``,
    ``metadata``, ``service_tier``, ``prompt_cache_key``, ``text.verbosity``,
    ``reasoning.effort`` on a model that does not reason, ...) are accepted."""
    if request.background:
        raise InvalidRequestError(
            "background responses are not supported by this server; leave 'background' "
            "unset or false.",
            param="background",
        )
    extra = request.model_extra or {}
    for name in ("conversation", "prompt"):
        if extra.get(name) is not None:
            raise InvalidRequestError(
                f"'{name}' is not supported by this server; send the input itself (and "
                "previous_response_id to continue a conversation).",
                param=name,
            )
    reasoning = request.reasoning
    if reasoning is not None:
        for name in ("summary", "generate_summary"):
            if getattr(reasoning, name) is not None:
                raise InvalidRequestError(
                    "Reasoning summaries are not supported: the model served here does not "
                    "reason apart from its reply.",
                    param=f"reasoning.{name}",
                )
    for index, include in enumerate(request.include or []):
        if include not in SUPPORTED_INCLUDES:
            raise InvalidRequestError(
                f"include value {include!r} is not supported by this server.",
                param=f"include[{index}]",
            )
    if request.top_logprobs:
        raise InvalidRequestError(
            "top_logprobs is not supported by this server.", param="top_logprobs"
        )
    if request.truncation == "auto":
        raise InvalidRequestError(
            "truncation 'auto' is not supported: an input longer than the context is "
            "refused, never cut.",
            param="truncation",
        )
    for index, tool in enumerate(request.tools or []):
        _check_tool(tool, index)


def _check_tool(tool: ToolParam, index: int) -> None:
    if tool.type != "function":
        raise InvalidRequestError(
            f"The built-in tool {tool.type!r} is not supported by this server; only "
            "function tools are.",
            param=f"tools[{index}].type",
        )
    if tool.name is None:
        raise InvalidRequestError(
            f"Missing required parameter: 'tools[{index}].name'.", param=f"tools[{index}].name"
        )
    if not FUNCTION_NAME.fullmatch(tool.name):
        raise InvalidRequestError(
            f"Invalid value for 'tools[{index}].name': a function name is 1 to 64 letters, "
            "digits, underscores and dashes.",
            param=f"tools[{index}].name",
            code="invalid_value",
        )


# ---- input as conversation items ------------------------------------------------------


def _part_text(part: ContentPart, role: str, param: str) -> str:
    if part.type in ("input_text", "output_text", "text") and part.text is not None:
        return part.text
    if part.type == "refusal" and role == "assistant":
        return part.refusal or ""
    if part.type in ("input_text", "output_text", "text"):
        raise InvalidRequestError(
            f"Missing required parameter: '{param}.text'.", param=f"{param}.text"
        )
    raise InvalidRequestError(
        f"{param}: content of type {part.type!r} is not supported; only text is.",
        param=f"{param}.type",
    )


def _content_text(content: str | list[ContentPart] | None, role: str, param: str) -> str:
    if content is None:
        raise InvalidRequestError(f"Missing required parameter: '{param}'.", param=param)
    if isinstance(content, str):
        return content
    return "".join(
        _part_text(part, role, f"{param}[{index}]") for index, part in enumerate(content)
    )


def _required(value: str | None, param: str) -> str:
    if value is None:
        raise InvalidRequestError(f"Missing required parameter: '{param}'.", param=param)
    return value


def _message_item(role: str, text: str, item_id: str | None = None) -> Item:
    if role == "assistant":
        return {
            "id": item_id or new_id("msg"),
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }
    return {
        "id": item_id or new_id("msg"),
        "type": "message",
        "role": role,
        "status": "completed",
        "content": [{"type": "input_text", "text": text}],
    }


def _input_item(item: InputItem, param: str) -> Item:
    kind = item.type or "message"
    if kind == "message":
        role = _required(item.role, f"{param}.role")
        if role not in MESSAGE_ROLES:
            raise InvalidRequestError(
                f"Invalid value for '{param}.role': {role!r} is not one of "
                "'user', 'assistant', 'system', 'developer'.",
                param=f"{param}.role",
            )
        return _message_item(role, _content_text(item.content, role, f"{param}.content"), item.id)
    if kind == "function_call":
        return {
            "id": item.id or new_id("fc"),
            "type": "function_call",
            "call_id": _required(item.call_id, f"{param}.call_id"),
            "name": _required(item.name, f"{param}.name"),
            "arguments": _required(item.arguments, f"{param}.arguments"),
            "status": "completed",
        }
    if kind == "function_call_output":
        return {
            "id": item.id or new_id("fco"),
            "type": "function_call_output",
            "call_id": _required(item.call_id, f"{param}.call_id"),
            "output": _content_text(item.output, "tool", f"{param}.output"),
            "status": "completed",
        }
    raise InvalidRequestError(
        f"Input items of type {kind!r} are not supported by this server; messages, "
        "function_call and function_call_output are.",
        param=f"{param}.type",
    )


def input_items(request: ResponsesRequest) -> list[Item]:
    """The request's input as stored items (each with an id), in order."""
    if request.input is None:
        return []
    if isinstance(request.input, str):
        return [_message_item("user", request.input)]
    return [_input_item(item, f"input[{index}]") for index, item in enumerate(request.input)]


# ---- to a generation spec -------------------------------------------------------------


def conversation_turns(
    instructions: str | None, items: list[Item], item_params: list[str]
) -> tuple[list[Turn], list[str]]:
    """Chat-template turns for the conversation, and the parameter each came from.

    Function calls that follow an assistant message (or each other) join it as its
    ``tool_calls``, as one assistant turn that calls tools; ``developer`` is ``system``.
    """
    turns: list[Turn] = []
    sources: list[str] = []
    calls: dict[str, str] = {}  # call_id -> function name, for the results
    if instructions is not None:
        turns.append({"role": "system", "content": instructions})
        sources.append("instructions")
    for item, param in zip(items, item_params, strict=True):
        kind = item["type"]
        if kind == "message":
            text = "".join(
                part.get("text") or part.get("refusal") or "" for part in item["content"]
            )
            role = "system" if item["role"] == "developer" else item["role"]
            turns.append({"role": role, "content": text})
            sources.append(param)
        elif kind == "function_call":
            calls[item["call_id"]] = item["name"]
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {
                    "name": item["name"],
                    "arguments": call_arguments(item["arguments"], f"{param}.arguments"),
                },
            }
            last = turns[-1] if turns else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                turns.append({"role": "assistant", "content": "", "tool_calls": [call]})
                sources.append(param)
        elif kind == "function_call_output":
            turn: Turn = {
                "role": "tool",
                "tool_call_id": item["call_id"],
                "content": item["output"],
            }
            if item["call_id"] in calls:
                turn["name"] = calls[item["call_id"]]
            turns.append(turn)
            sources.append(param)
    return turns, sources


def _function_tools(request: ResponsesRequest) -> tuple[FunctionTool, ...]:
    allowed = _allowed_names(request)
    return tuple(
        FunctionTool(
            name=tool.name or "",
            description=tool.description,
            parameters=tool.parameters,
            name_param=f"tools[{index}].name",
            parameters_param=f"tools[{index}].parameters",
        )
        for index, tool in enumerate(request.tools or [])
        if allowed is None or tool.name in allowed
    )


def _allowed_names(request: ResponsesRequest) -> set[str] | None:
    choice = request.tool_choice
    if not isinstance(choice, ToolChoiceObject) or choice.type != "allowed_tools":
        return None
    names: set[str] = set()
    for index, tool in enumerate(choice.tools or []):
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise InvalidRequestError(
                "Only function tools (with a name) can be allowed: this server has no "
                "built-in tools.",
                param=f"tool_choice.tools[{index}]",
            )
        names.add(tool["name"])
    return names


def _tool_choice(request: ResponsesRequest) -> ToolChoiceMode | NamedTool | None:
    choice = request.tool_choice
    if choice is None or isinstance(choice, str):
        return choice
    if choice.type == "function":
        return NamedTool(_required(choice.name, "tool_choice.name"))
    if choice.type == "allowed_tools":
        if choice.mode is None:
            raise InvalidRequestError(
                "Missing required parameter: 'tool_choice.mode'.", param="tool_choice.mode"
            )
        return choice.mode
    raise InvalidRequestError(
        f"tool_choice of type {choice.type!r} is not supported: this server has only "
        "function tools.",
        param="tool_choice.type",
    )


def _json_output(request: ResponsesRequest) -> JSONOutput | None:
    text_format = request.text.format if request.text is not None else None
    if text_format is None or text_format.type == "text":
        return None
    if text_format.type == "json_object":
        return JSONOutput(param="text.format")
    _required(text_format.name, "text.format.name")
    if text_format.schema_ is None:
        raise InvalidRequestError(
            "Missing required parameter: 'text.format.schema'.", param="text.format.schema"
        )
    return JSONOutput(text_format.schema_, param="text.format.schema")


def _nul_location(sources: list[str], turns: list[Turn]) -> str:
    """The parameter whose text holds a NUL character (for engines that cannot take one)."""
    for source, turn in zip(sources, turns, strict=False):
        if "\\u0000" in json.dumps(turn):  # JSON writes a NUL as this escape
            return source
    return "tools" if any(t.get("tool_calls") for t in turns) else "text.format"


def generation_spec(
    request: ResponsesRequest, items: list[Item], item_params: list[str]
) -> GenerationSpec:
    """What the core generates this response from, given the conversation ``items``."""
    turns, sources = conversation_turns(request.instructions, items, item_params)
    if not turns:
        raise InvalidRequestError("Missing required parameter: 'input'.", param="input")
    return GenerationSpec(
        prompt=Conversation(
            tuple(turns), locate_nul=lambda: _nul_location(sources, turns), param="input"
        ),
        output=OutputRequest(
            tools=_function_tools(request),
            tool_choice=_tool_choice(request),
            parallel_tool_calls=request.parallel_tool_calls,
            json_output=_json_output(request),
        ),
        sampling=Sampling(temperature=request.temperature, top_p=request.top_p),
        max_tokens=request.max_output_tokens,
    )


# ---- the response object --------------------------------------------------------------


def _echo_tool_choice(request: ResponsesRequest) -> ToolChoiceEcho:
    choice = request.tool_choice
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        return choice
    if choice.type == "function" and choice.name is not None:
        return NamedFunctionChoice(name=choice.name)
    if choice.type == "allowed_tools" and choice.mode is not None:
        return AllowedToolsChoice(mode=choice.mode, tools=choice.tools or [])
    return "auto"


def _echo_text(request: ResponsesRequest) -> TextConfig:
    text = request.text
    text_format = text.format if text is not None else None
    verbosity = (text.verbosity if text is not None else None) or "medium"
    if text_format is None or text_format.type == "text":
        return TextConfig(format=FormatText(), verbosity=verbosity)
    if text_format.type == "json_object":
        return TextConfig(format=FormatJSONObject(), verbosity=verbosity)
    return TextConfig(
        format=FormatJSONSchema(
            name=text_format.name or "",
            schema=text_format.schema_ or {},
            description=text_format.description,
            strict=text_format.strict,
        ),
        verbosity=verbosity,
    )


def initial_response(
    request: ResponsesRequest, defaults: GenerationDefaults, model_id: str
) -> ResponseObject:
    """The response as it starts: in progress, no output, the request's settings as the
    server applies them (its defaults where the request has none)."""
    return ResponseObject(
        id=new_id("resp"),
        created_at=int(time.time()),
        status="in_progress",
        instructions=request.instructions,
        max_output_tokens=request.max_output_tokens,
        model=model_id,
        parallel_tool_calls=request.parallel_tool_calls is not False,
        previous_response_id=request.previous_response_id,
        store=request.store is not False,
        temperature=defaults.temperature if request.temperature is None else request.temperature,
        top_p=defaults.top_p if request.top_p is None else request.top_p,
        text=_echo_text(request),
        tool_choice=_echo_tool_choice(request),
        tools=[
            FunctionToolEcho(
                name=tool.name or "",
                description=tool.description,
                parameters=tool.parameters,
                # Function tools are strict unless the request says otherwise, as in
                # OpenAI's Responses API; arguments are held to the schema either way.
                strict=True if tool.strict is None else tool.strict,
            )
            for tool in request.tools or []
        ],
        user=request.user,
        metadata=request.metadata or {},
    )
