"""What a request asks for: checked tools, tool_choice and response_format, and the
output mode and call format that follow from them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import APIError, InvalidRequestError
from .schemas import check_client_schema, check_total_size

CallFormat = Literal["hermes", "json"]
Mode = Literal["auto", "required", "named", "json"]

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
# The schema of a json_object reply: any JSON object.
FREE_OBJECT: dict[str, Any] = {"type": "object"}


class InvalidModelOutputError(APIError):
    """500: the model's reply could not be turned into what the request demands.

    OpenAI answers a malformed model output the same way ("The model produced invalid
    content"), and its SDK retries a 500 unless told not to: the serving layer sends
    ``x-should-retry: false`` when sampling is greedy, where a retry repeats the output.
    """

    status_code = 500
    error_type = "server_error"
    default_code = "invalid_model_output"
    retryable = True  # False when another sample cannot help (cut off by max_tokens)


# ---- the plan: what a request asks for --------------------------------------------------


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str | None
    parameters: dict[str, Any]

    def openai_dict(self) -> dict[str, Any]:
        """The tool as OpenAI (and Hugging Face chat templates) write it."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


# Strings without a maxLength are held to STRING_CAP characters and arrays without
# maxItems to ARRAY_CAP items in the grammar: a small model that starts repeating itself
# inside a string or a list would otherwise run to max_tokens and never finish the call.
# A schema's own maxLength / maxItems is kept as it is.
STRING_CAP = 100
ARRAY_CAP = 8


@dataclass(frozen=True)
class Caps:
    """Length limits for unbounded strings and arrays in a call's arguments."""

    string: int = STRING_CAP
    array: int = ARRAY_CAP

    @classmethod
    def for_budget(cls, max_tokens: int | None) -> Caps:
        """Tighter limits when the reply's token budget is small, so that a whole call
        fits in it (a call cut off by max_tokens cannot be returned)."""
        if max_tokens is None:
            return cls()
        return cls(
            string=min(STRING_CAP, max(16, max_tokens // 4)),
            array=min(ARRAY_CAP, max(2, max_tokens // 40)),
        )


DEFAULT_CAPS = Caps()


@dataclass(frozen=True)
class OutputPlan:
    r"""How one request's reply is constrained and read.

    ``mode``: ``auto`` (text or calls), ``required`` (one or more calls), ``named`` (one
    call to ``tools[0]``), ``json`` (a JSON reply, no tools). ``prompt_tools`` are the
    tools described to the model, ``tools`` the ones it may call. ``response_schema`` is
    the schema of a JSON text reply (``{"type": "object"}`` for json_object), or None
    for free text. ``schema_from_prompt``: that schema was found in the prompt
    (:mod:`.prompt_schema`); ``fenced``: the reply is written as a \`\`\`json block.
    """

    mode: Mode
    call_format: CallFormat
    tools: tuple[ToolSpec, ...] = ()
    prompt_tools: tuple[ToolSpec, ...] = ()
    parallel: bool = True
    response_schema: dict[str, Any] | None = None
    grammar_engine: bool = True
    caps: Caps = DEFAULT_CAPS
    schema_from_prompt: bool = False
    fenced: bool = False

    @property
    def free_json_object(self) -> bool:
        """A JSON reply of any object (``json_object``): nothing but the server's rules
        keeps it from running on (see :mod:`.json_close`)."""
        return self.mode == "json" and self.response_schema == FREE_OBJECT

    @property
    def arguments_only(self) -> bool:
        """PicoLM with a named function: the model writes only the arguments object."""
        return self.mode == "named" and not self.grammar_engine

    @property
    def uses_json_mode(self) -> bool:
        """Whether an engine without a grammar should be held to one JSON object."""
        return self.mode in ("required", "named", "json")

    def tool(self, name: str) -> ToolSpec | None:
        return next((tool for tool in self.tools if tool.name == name), None)


# ---- what a request asks for, in every API's terms --------------------------------------


@dataclass(frozen=True)
class FunctionTool:
    """A function the model may call, as a wire API declared it. ``name_param`` and
    ``parameters_param`` say where the request holds them (errors name them)."""

    name: str
    description: str | None
    parameters: dict[str, Any] | None
    name_param: str
    parameters_param: str


@dataclass(frozen=True)
class NamedTool:
    """A tool choice that names the one function to call."""

    name: str


ToolChoiceMode = Literal["none", "auto", "required"]


@dataclass(frozen=True)
class JSONOutput:
    r"""A reply that must be JSON: ``schema`` (None: any JSON object), and where the
    request holds it (errors name it). ``from_prompt``: the schema was found in the
    prompt; ``fenced``: the reply is written as a \`\`\`json fenced block."""

    schema: dict[str, Any] | None = None
    param: str = "response_format.json_schema.schema"
    from_prompt: bool = False
    fenced: bool = False


@dataclass(frozen=True)
class OutputRequest:
    """Tools, tool choice and reply format, as every API reduces them."""

    tools: tuple[FunctionTool, ...] = ()
    tool_choice: ToolChoiceMode | NamedTool | None = None
    parallel_tool_calls: bool | None = None
    json_output: JSONOutput | None = None
    tool_choice_param: str = "tool_choice"


class _RequestSize:
    """JSON values in the schemas of one request so far (bounded in all)."""

    def __init__(self) -> None:
        self.nodes = 0

    def add(self, nodes: int, param: str) -> None:
        self.nodes += nodes
        check_total_size(self.nodes, param)


def _tool_specs(request: OutputRequest, size: _RequestSize) -> list[ToolSpec]:
    specs: list[ToolSpec] = []
    seen: set[str] = set()
    for tool in request.tools:
        param = tool.parameters_param
        parameters = tool.parameters if tool.parameters is not None else EMPTY_PARAMETERS
        size.add(check_client_schema(parameters, param), param)
        declared = parameters.get("type")
        if declared is not None and declared != "object":
            raise InvalidRequestError(
                f"Invalid schema for '{param}': a function's parameters must be a schema "
                f"of type 'object', not {declared!r}.",
                param=param,
                code="invalid_schema",
            )
        if tool.name in seen:
            raise InvalidRequestError(
                f"Duplicate function name {tool.name!r} in tools: names must be unique.",
                param=tool.name_param,
            )
        seen.add(tool.name)
        specs.append(ToolSpec(tool.name, tool.description, parameters))
    return specs


def _response_schema(request: OutputRequest, size: _RequestSize) -> dict[str, Any] | None:
    output = request.json_output
    if output is None:
        return None
    if output.schema is None:
        return FREE_OBJECT
    size.add(check_client_schema(output.schema, output.param), output.param)
    return output.schema


def make_plan(
    request: OutputRequest,
    *,
    hermes_template: bool,
    grammar_engine: bool,
    max_tokens: int | None = None,
) -> OutputPlan | None:
    """The plan for a request, or None for a plain text reply (no tools, no JSON).

    ``max_tokens`` is the reply's token budget (the request's, or the server's default);
    it bounds the grammar's caps."""
    size = _RequestSize()
    specs = _tool_specs(request, size)
    response_schema = _response_schema(request, size)
    choice = request.tool_choice
    choice_param = request.tool_choice_param
    if not specs and choice is not None and choice not in ("none", "auto"):
        raise InvalidRequestError(
            f"Invalid value for '{choice_param}': '{choice_param}' is only allowed when "
            "'tools' are specified.",
            param=choice_param,
        )
    call_format: CallFormat = "hermes" if hermes_template and grammar_engine else "json"
    parallel = request.parallel_tool_calls is not False and grammar_engine
    caps = Caps.for_budget(max_tokens)
    common = {"call_format": call_format, "grammar_engine": grammar_engine, "caps": caps}
    if not specs or choice == "none":
        # tool_choice none: the tools are not shown at all. OpenAI still describes them
        # to the model, but a small model shown a call format tends to write calls as
        # text; earlier calls in the conversation are still rendered.
        if response_schema is None:
            return None
        output = request.json_output
        assert output is not None
        return OutputPlan(
            "json",
            response_schema=response_schema,
            schema_from_prompt=output.from_prompt,
            fenced=output.fenced,
            **common,  # type: ignore[arg-type]
        )
    if isinstance(choice, NamedTool) or (
        choice == "required" and len(specs) == 1 and not grammar_engine
    ):
        # Without a grammar (PicoLM), "required" with one tool is that tool by name: the
        # model then writes only the arguments, which it gets right far more often.
        name = choice.name if isinstance(choice, NamedTool) else specs[0].name
        chosen = next((spec for spec in specs if spec.name == name), None)
        if chosen is None:
            raise InvalidRequestError(
                f"Invalid value for '{choice_param}': no function named {name!r} is in 'tools'.",
                param=choice_param,
            )
        return OutputPlan(
            "named",
            tools=(chosen,),
            prompt_tools=(chosen,),
            parallel=False,
            **common,  # type: ignore[arg-type]
        )
    mode: Mode = "required" if choice == "required" else "auto"
    return OutputPlan(
        mode,
        tools=tuple(specs),
        prompt_tools=tuple(specs),
        parallel=parallel,
        response_schema=response_schema if mode == "auto" else None,
        **common,  # type: ignore[arg-type]
    )


def is_hermes_template(source: str) -> bool:
    """ChatML/Qwen-style templates: their models know ``<tool_call>`` blocks."""
    return "<|im_start|>" in source or CALL_OPEN in source


def compact_json(value: Any) -> str:
    """JSON as the model is shown it: one line, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False)
