"""Ollama's requests in: chat and generate requests checked and reduced to a
:class:`~picolm_server.generation.GenerationSpec` (pure, no engine), ``keep_alive``
to seconds, and what a local model here cannot do refused clearly.

- ``tools`` mean ``auto`` (Ollama has no ``tool_choice``); calls are grammar-valid on
  llama.cpp and schema-exact on PicoLM, as on the other APIs.
- ``format``: ``"json"`` is any JSON object, an object is a JSON schema the reply
  matches exactly (as ``response_format: json_schema``).
- ``options``: ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop`` and
  ``num_predict`` apply; ``num_ctx`` is checked against the model's context by the
  route (it needs the engine); the others (``repeat_penalty``, ...) are accepted.
"""

from __future__ import annotations

import json
import re

from ...config.settings import MAX_KEEP_ALIVE_SECONDS
from ...errors import InvalidRequestError
from ...generation import (
    Conversation,
    FunctionTool,
    GenerationSpec,
    JSONOutput,
    OutputRequest,
    RawPrompt,
    Sampling,
    Turn,
)
from .types import ChatRequest, Format, GenerateRequest, KeepAlive, Message, Options, Tool

# Go's duration units, as Ollama parses keep_alive.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def _bad_keep_alive(value: KeepAlive) -> InvalidRequestError:
    return InvalidRequestError(
        f"keep_alive {value!r} is not a duration: give seconds (300), a duration "
        '("5m", "1h30m"), 0 to unload after the request, or a negative value to keep '
        "the model loaded.",
        param="keep_alive",
    )


def keep_alive_seconds(value: KeepAlive) -> float | None:
    """A request's ``keep_alive`` in seconds (negative: forever; None: not given)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            sign = -1.0 if text.startswith("-") else 1.0
            body = text.lstrip("+-")
            parts = _DURATION.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise _bad_keep_alive(value) from None
            seconds = sign * sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        seconds = float(value)
    if seconds != seconds:  # NaN
        raise _bad_keep_alive(value)
    if seconds < 0:
        return -1.0
    if seconds > MAX_KEEP_ALIVE_SECONDS:
        raise InvalidRequestError(
            f"keep_alive is at most {MAX_KEEP_ALIVE_SECONDS:.0f} seconds (30 days); a "
            "negative value keeps the model loaded for good.",
            param="keep_alive",
        )
    return seconds


def refuse_think(think: bool | str | None, model: str) -> None:
    """``think: false`` (or absent) is what every model here does; thinking is not."""
    if think not in (None, False, "", "false", "none"):
        raise InvalidRequestError(f'"{model}" does not support thinking', param="think")


def _refuse_images(images: list[str] | None, param: str) -> None:
    if images:
        raise InvalidRequestError(
            "images are not supported: the models this server runs take text only.",
            param=param,
        )


def output_request(tools: list[Tool] | None, format: Format) -> OutputRequest:
    """``tools`` (``auto``) and ``format``."""
    json_output: JSONOutput | None = None
    if format == "json":
        json_output = JSONOutput(param="format")
    elif isinstance(format, dict):
        json_output = JSONOutput(format, param="format")
    return OutputRequest(
        tools=tuple(
            FunctionTool(
                name=tool.function.name,
                description=tool.function.description,
                parameters=tool.function.parameters,
                name_param=f"tools[{index}].function.name",
                parameters_param=f"tools[{index}].function.parameters",
            )
            for index, tool in enumerate(tools or [])
        ),
        tool_choice="auto" if tools else None,
        json_output=json_output,
    )


def sampling(options: Options | None) -> tuple[Sampling, tuple[str, ...], int | None]:
    """Sampling, stop strings and the token bound (``num_predict``; -1 and -2,
    Ollama's "no bound" and "fill the context", are the server's own bound)."""
    if options is None:
        return Sampling(top_k_param="options.top_k"), (), None
    stop = (options.stop,) if isinstance(options.stop, str) else tuple(options.stop or ())
    bound = options.num_predict if options.num_predict and options.num_predict > 0 else None
    chosen = Sampling(
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        seed=options.seed,
        top_k_param="options.top_k",
    )
    return chosen, stop, bound


def _call_arguments(arguments: dict[str, object] | str, param: str) -> object:
    if isinstance(arguments, dict):
        return arguments
    try:
        return json.loads(arguments)
    except ValueError:
        raise InvalidRequestError(
            f"{param} must be an object (or its JSON text).", param=param
        ) from None


def chat_turns(messages: list[Message]) -> list[Turn]:
    """Messages as chat templates take them. Ollama's calls carry no ids: each gets
    one, and a ``tool`` result is tied to the earliest call of its ``tool_name`` (else
    the earliest call) not yet answered."""
    turns: list[Turn] = []
    unanswered: list[tuple[str, str]] = []  # (call id, function name)
    for index, message in enumerate(messages):
        _refuse_images(message.images, f"messages[{index}].images")
        turn: Turn = {"role": message.role, "content": message.content or ""}
        if message.tool_calls:
            calls = []
            for call_index, call in enumerate(message.tool_calls):
                call_id = f"call_{index}_{call_index}"
                unanswered.append((call_id, call.function.name))
                param = f"messages[{index}].tool_calls[{call_index}].function.arguments"
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": _call_arguments(call.function.arguments, param),
                        },
                    }
                )
            turn["tool_calls"] = calls
        if message.role == "tool":
            name = message.tool_name
            match = next((c for c in unanswered if c[1] == name), None)
            match = match or (unanswered[0] if unanswered else None)
            if match is not None:
                unanswered.remove(match)
                turn["tool_call_id"] = match[0]
                name = name or match[1]
            if name:
                turn["name"] = name
        turns.append(turn)
    return turns


def chat_spec(request: ChatRequest, model: str) -> GenerationSpec:
    """The whole chat request as the core takes it; raises 400s naming the field."""
    refuse_think(request.think, model)
    if not request.messages:
        raise InvalidRequestError("messages must hold at least one message.", param="messages")
    chosen, stop, bound = sampling(request.options)
    return GenerationSpec(
        prompt=Conversation(tuple(chat_turns(request.messages))),
        output=output_request(request.tools, request.format),
        sampling=chosen,
        stop=stop,
        max_tokens=bound,
    )


def generate_prompt(request: GenerateRequest) -> Conversation | RawPrompt:
    """``raw``: the prompt as it is; else the prompt (and ``system``) as chat turns."""
    prompt = request.prompt or ""
    if request.raw:
        return RawPrompt(prompt, parse_special=True, param="prompt")
    turns: list[Turn] = []
    if request.system:
        turns.append({"role": "system", "content": request.system})
    turns.append({"role": "user", "content": prompt})
    return Conversation(tuple(turns), param="prompt")


def refuse_generate_unsupported(request: GenerateRequest, model: str) -> None:
    refuse_think(request.think, model)
    _refuse_images(request.images, "images")
    if request.context:
        raise InvalidRequestError(
            "context (the token state of an earlier reply) is not supported: send the "
            "conversation to /api/chat instead.",
            param="context",
        )
    if request.template:
        raise InvalidRequestError(
            "template is not supported: the model's own chat template is used (or raw: "
            "true to send the prompt as it is).",
            param="template",
        )


def generate_spec(request: GenerateRequest, prompt: Conversation | RawPrompt) -> GenerationSpec:
    """The generation of ``prompt`` (built by :func:`generate_prompt`, or a
    fill-in-the-middle prompt for ``suffix``)."""
    chosen, stop, bound = sampling(request.options)
    return GenerationSpec(
        prompt=prompt,
        output=output_request(None, request.format),
        sampling=chosen,
        stop=stop,
        max_tokens=bound,
    )


def embed_inputs(value: str | list[str]) -> list[str]:
    inputs = [value] if isinstance(value, str) else value
    if not inputs:
        raise InvalidRequestError("input must hold at least one text.", param="input")
    for index, text in enumerate(inputs):
        if not text:
            where = "input" if isinstance(value, str) else f"input[{index}]"
            raise InvalidRequestError(f"{where} is empty: nothing to embed.", param=where)
    return inputs
