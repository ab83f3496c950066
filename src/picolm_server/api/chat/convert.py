"""Chat completions in: an OpenAI chat request checked and reduced to a
:class:`~picolm_server.generation.GenerationSpec` (pure, no engine)."""

from __future__ import annotations

from ...errors import InvalidRequestError
from ...generation import (
    Conversation,
    FunctionTool,
    GenerationSpec,
    JSONOutput,
    NamedTool,
    OutputRequest,
    Sampling,
    Turn,
)
from ...http.json_text import call_arguments
from .types import ChatCompletionRequest, ChatMessage, NamedToolChoice


def refuse_unsupported(request: ChatCompletionRequest) -> None:
    """Refuse parameters whose silent omission would mislead the client.

    Parameters with no effect on a local model (``user``, ``store``, ``metadata``,
    ``service_tier``, penalties, ...) are accepted and ignored.
    """
    if request.n is not None and request.n > 1:
        raise InvalidRequestError(
            "n > 1 is not supported: this server generates one choice per request.", param="n"
        )
    if request.logprobs:
        raise InvalidRequestError("logprobs are not supported by this server.", param="logprobs")
    if request.top_logprobs:
        raise InvalidRequestError(
            "top_logprobs is not supported by this server.", param="top_logprobs"
        )
    extra = request.model_extra or {}
    modalities = extra.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise InvalidRequestError("Only the text modality is supported.", param="modalities")
    if extra.get("audio") is not None:
        raise InvalidRequestError("Audio output is not supported.", param="audio")
    if extra.get("functions") or extra.get("function_call"):
        raise InvalidRequestError(
            "The deprecated functions/function_call parameters are not supported; use tools.",
            param="functions",
        )
    if extra.get("web_search_options") is not None:
        raise InvalidRequestError("Web search is not supported.", param="web_search_options")


def message_text(message: ChatMessage, index: int) -> str:
    """The text of a message; an array of text parts is joined with newlines."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for part_index, part in enumerate(content):
        if part.type == "text":
            if part.text is None:
                raise InvalidRequestError(
                    f"messages[{index}].content[{part_index}].text is required for a text part.",
                    param=f"messages[{index}].content[{part_index}].text",
                )
            texts.append(part.text)
        elif part.type == "refusal" and message.role == "assistant":
            texts.append(str((part.model_extra or {}).get("refusal", "")))
        else:
            raise InvalidRequestError(
                f"messages[{index}].content[{part_index}]: content of type {part.type!r} is "
                "not supported; only text is.",
                param=f"messages[{index}].content[{part_index}].type",
            )
    return "\n".join(texts)


def template_messages(messages: list[ChatMessage]) -> list[Turn]:
    """Messages as chat templates expect them (Hugging Face's conventions).

    ``developer`` is OpenAI's new name for ``system``; tool-call arguments are handed to
    the template as objects, which is what templates that render them are written for.
    """
    converted: list[Turn] = []
    for index, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        if role == "function":
            role = "tool"
        if role in ("system", "user") and message.content is None:
            raise InvalidRequestError(
                f"messages[{index}].content is required for role {message.role!r}.",
                param=f"messages[{index}].content",
            )
        if role == "tool" and message.role == "tool" and not message.tool_call_id:
            raise InvalidRequestError(
                f"messages[{index}].tool_call_id is required for role 'tool'.",
                param=f"messages[{index}].tool_call_id",
            )
        entry: Turn = {"role": role, "content": message_text(message, index)}
        if message.name:
            entry["name"] = message.name
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            entry["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": call_arguments(
                            call.function.arguments,
                            f"messages[{index}].tool_calls[{call_index}].function.arguments",
                        ),
                    },
                }
                for call_index, call in enumerate(message.tool_calls)
            ]
        converted.append(entry)
    return converted


def nul_location(request: ChatCompletionRequest) -> str:
    """The field of a request whose prompt holds a NUL character."""
    for index, message in enumerate(request.messages):
        content = message.content
        if isinstance(content, str) and "\0" in content:
            return f"messages[{index}].content"
        if isinstance(content, list):
            for part_index, part in enumerate(content):
                if "\0" in (part.text or ""):
                    return f"messages[{index}].content[{part_index}].text"
        if "\\u0000" in message.model_dump_json():
            return f"messages[{index}]"
    return "tools" if request.tools else "response_format"


def output_request(request: ChatCompletionRequest) -> OutputRequest:
    """``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``response_format``."""
    tools = tuple(
        FunctionTool(
            name=tool.function.name,
            description=tool.function.description,
            parameters=tool.function.parameters,
            name_param=f"tools[{index}].function.name",
            parameters_param=f"tools[{index}].function.parameters",
        )
        for index, tool in enumerate(request.tools or [])
    )
    choice = request.tool_choice
    json_output: JSONOutput | None = None
    response_format = request.response_format
    if response_format is not None and response_format.type == "json_object":
        json_output = JSONOutput()
    elif response_format is not None and response_format.type == "json_schema":
        if response_format.json_schema is None:
            raise InvalidRequestError(
                "Missing required parameter: 'response_format.json_schema'.",
                param="response_format.json_schema",
            )
        json_output = JSONOutput(response_format.json_schema.schema_)
    return OutputRequest(
        tools=tools,
        tool_choice=NamedTool(choice.function.name)
        if isinstance(choice, NamedToolChoice)
        else choice,
        parallel_tool_calls=request.parallel_tool_calls,
        json_output=json_output,
    )


def stop_strings(request: ChatCompletionRequest) -> tuple[str, ...]:
    return (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())


def chat_spec(request: ChatCompletionRequest) -> GenerationSpec:
    """The whole request as the core takes it; raises 400s naming the parameter."""
    refuse_unsupported(request)
    return GenerationSpec(
        prompt=Conversation(
            tuple(template_messages(request.messages)),
            locate_nul=lambda: nul_location(request),
        ),
        output=output_request(request),
        sampling=Sampling(temperature=request.temperature, top_p=request.top_p, seed=request.seed),
        stop=stop_strings(request),
        max_tokens=request.max_completion_tokens or request.max_tokens,
    )
