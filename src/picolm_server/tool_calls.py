"""Tool calling and structured output: from OpenAI's ``tools``/``response_format`` to a
prompt, a decoding constraint, and back to well-formed, schema-valid tool calls.

Everything here is pure (no HTTP, no engine), in four steps:

1. :func:`make_plan` checks the request's ``tools``, ``tool_choice``,
   ``parallel_tool_calls`` and ``response_format`` (400s name the parameter) and decides
   the output mode and the call format: Hermes-style ``<tool_call>\\n{...}\\n</tool_call>``
   blocks for ChatML/Qwen-style templates, bare JSON objects otherwise, and bare JSON
   objects always when the engine cannot run a grammar (PicoLM's ``--json`` only keeps
   JSON balanced and stops after the first object).
2. :func:`prompt_messages` puts the tool descriptions and the exact output format into
   the conversation (or leaves the tools to a chat template that renders them), and
   writes earlier calls and ``role: tool`` results in that format when the template
   cannot render them.
3. :func:`build_grammar` makes one GBNF grammar for llama.cpp: per tool an alternative
   whose ``arguments`` follow that tool's schema, optional repetition for parallel calls,
   and for ``auto`` a free-text branch that can never contain ``<tool_call>``.
4. :class:`ReplyDecoder` reads the generated text as it streams and turns it into
   content and tool calls, each parsed and validated against its schema before it is
   released. Non-streamed replies run the same decoder over the same text, so a
   streamed reply reassembles to exactly the non-streamed one.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from .errors import APIError, InvalidRequestError
from .protocol import ChatCompletionRequest, NamedToolChoice

CallFormat = Literal["hermes", "json"]
Mode = Literal["auto", "required", "named", "json"]

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


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


@dataclass(frozen=True)
class OutputPlan:
    """How one request's reply is constrained and read.

    ``mode``: ``auto`` (text or calls), ``required`` (one or more calls), ``named`` (one
    call to ``tools[0]``), ``json`` (a JSON reply, no tools). ``prompt_tools`` are the
    tools described to the model, ``tools`` the ones it may call. ``response_schema`` is
    the schema of a JSON text reply (``{"type": "object"}`` for json_object), or None
    for free text.
    """

    mode: Mode
    call_format: CallFormat
    tools: tuple[ToolSpec, ...] = ()
    prompt_tools: tuple[ToolSpec, ...] = ()
    parallel: bool = True
    response_schema: dict[str, Any] | None = None
    grammar_engine: bool = True

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


def _check_schema(schema: Any, param: str) -> None:
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"Invalid schema for '{param}': must be an object.", param=param)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        where = "/".join(str(part) for part in exc.path)
        raise InvalidRequestError(
            f"Invalid schema for '{param}': {exc.message}" + (f" (at {where})" if where else ""),
            param=param,
            code="invalid_schema",
        ) from None
    except jsonschema.exceptions.UnknownType as exc:  # pragma: no cover - defensive
        raise InvalidRequestError(f"Invalid schema for '{param}': {exc}", param=param) from None


def _tool_specs(request: ChatCompletionRequest) -> list[ToolSpec]:
    specs: list[ToolSpec] = []
    seen: set[str] = set()
    for index, tool in enumerate(request.tools or []):
        function = tool.function
        param = f"tools[{index}].function.parameters"
        parameters = function.parameters if function.parameters is not None else EMPTY_PARAMETERS
        _check_schema(parameters, param)
        declared = parameters.get("type")
        if declared is not None and declared != "object":
            raise InvalidRequestError(
                f"Invalid schema for '{param}': a function's parameters must be a schema "
                f"of type 'object', not {declared!r}.",
                param=param,
                code="invalid_schema",
            )
        if function.name in seen:
            raise InvalidRequestError(
                f"Duplicate function name {function.name!r} in tools: names must be unique.",
                param=f"tools[{index}].function.name",
            )
        seen.add(function.name)
        specs.append(ToolSpec(function.name, function.description, parameters))
    return specs


def _response_schema(request: ChatCompletionRequest) -> dict[str, Any] | None:
    response_format = request.response_format
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "object"}
    if response_format.json_schema is None:
        raise InvalidRequestError(
            "Missing required parameter: 'response_format.json_schema'.",
            param="response_format.json_schema",
        )
    schema = response_format.json_schema.schema_
    if schema is None:
        return {"type": "object"}
    _check_schema(schema, "response_format.json_schema.schema")
    return schema


def make_plan(
    request: ChatCompletionRequest,
    *,
    hermes_template: bool,
    grammar_engine: bool,
) -> OutputPlan | None:
    """The plan for a request, or None for a plain text reply (no tools, no JSON)."""
    specs = _tool_specs(request)
    response_schema = _response_schema(request)
    choice = request.tool_choice
    if not specs and choice is not None and choice not in ("none", "auto"):
        raise InvalidRequestError(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
            "are specified.",
            param="tool_choice",
        )
    call_format: CallFormat = "hermes" if hermes_template and grammar_engine else "json"
    parallel = request.parallel_tool_calls is not False and grammar_engine
    common = {"call_format": call_format, "grammar_engine": grammar_engine}
    if not specs or choice == "none":
        # tool_choice none: the tools are not shown at all. OpenAI still describes them
        # to the model, but a small model shown a call format tends to write calls as
        # text; earlier calls in the conversation are still rendered.
        if response_schema is None:
            return None
        return OutputPlan("json", response_schema=response_schema, **common)  # type: ignore[arg-type]
    if isinstance(choice, NamedToolChoice):
        chosen = next((spec for spec in specs if spec.name == choice.function.name), None)
        if chosen is None:
            raise InvalidRequestError(
                f"Invalid value for 'tool_choice': no function named "
                f"{choice.function.name!r} is in 'tools'.",
                param="tool_choice",
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


# ---- prompting ---------------------------------------------------------------------------


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def format_call(name: str, arguments: Any, call_format: CallFormat) -> str:
    """One call as the model is asked to write it."""
    body = _compact({"name": name, "arguments": arguments})
    if call_format == "hermes":
        return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"
    return body


def tool_section(plan: OutputPlan) -> str:
    """The system-prompt text that describes the tools and the exact output format."""
    lines: list[str] = []
    if plan.mode == "json":
        return response_format_section(plan.response_schema)
    tools = plan.prompt_tools
    if plan.arguments_only:
        tool = tools[0]
        lines.append(f"# Tool\n\nCall the function `{tool.name}` now.")
        if tool.description:
            lines.append(f"It does this: {tool.description}")
        lines.append(
            "Reply with only the JSON object of its arguments, with no other text. "
            "The arguments must match this JSON schema:\n" + _compact(tool.parameters)
        )
        return "\n".join(lines)
    if plan.call_format == "hermes":
        lines.append("# Tools\n\nYou may call one or more functions to assist with the user query.")
        lines.append("\nYou are provided with function signatures within <tools></tools> XML tags:")
        lines.append("<tools>")
        lines.extend(_compact(tool.openai_dict()) for tool in tools)
        lines.append("</tools>")
        lines.append(
            "\nFor each function call, return a json object with function name and arguments "
            "within <tool_call></tool_call> XML tags:\n"
            f'{CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n'
            f"{CALL_CLOSE}"
        )
    else:
        lines.append("# Tools\n\nYou can call these functions:")
        lines.extend(_compact(tool.openai_dict()) for tool in tools)
        lines.append(
            "\nTo call a function, reply with only a JSON object, with no other text:\n"
            '{"name": <function-name>, "arguments": <args-json-object>}'
        )
    if plan.mode == "named":
        lines.append(f"\nYou must call the function `{tools[0].name}` now.")
    elif plan.mode == "required":
        lines.append("\nYou must call at least one function now.")
    elif plan.response_schema is not None:
        lines.append(
            "\nIf no function is needed, reply with a JSON object instead"
            + (
                " that matches this JSON schema:\n" + _compact(plan.response_schema)
                if plan.response_schema != {"type": "object"}
                else "."
            )
        )
    else:
        lines.append("\nIf no function is needed, answer the user directly in plain text.")
    if not plan.parallel and plan.mode != "named":
        lines.append("Call at most one function at a time.")
    return "\n".join(lines)


def response_format_section(schema: dict[str, Any] | None) -> str:
    if schema is None or schema == {"type": "object"}:
        return "Reply with only a JSON object, with no other text."
    return (
        "Reply with only a JSON object, with no other text, that matches this JSON "
        "schema:\n" + _compact(schema)
    )


def prompt_messages(
    messages: list[dict[str, Any]],
    plan: OutputPlan | None,
    *,
    template_renders_tools: bool,
    call_format: CallFormat,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Messages (Hugging Face conventions) and ``tools`` to render the prompt with.

    A template that renders tools gets the conversation as it is and the tool list; it
    describes the tools in its own words. Otherwise the tool section goes into the system
    message (a new one first when there is none), and earlier calls and tool results are
    written into assistant and user turns in the format the model is asked to use.
    """
    uses_tools = plan is not None and plan.mode != "json"
    if template_renders_tools:
        converted = [dict(message) for message in messages]
        tools = [tool.openai_dict() for tool in plan.prompt_tools] if plan and uses_tools else None
        if plan is not None and (plan.arguments_only or plan.mode == "json"):
            _add_system(converted, tool_section(plan))
        return converted, tools
    converted = _inline_tool_turns(messages, call_format)
    if plan is not None:
        _add_system(converted, tool_section(plan))
    return converted, None


def _add_system(messages: list[dict[str, Any]], section: str) -> None:
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        text = str(first.get("content") or "")
        first["content"] = f"{text}\n\n{section}" if text else section
        messages[0] = first
    else:
        messages.insert(0, {"role": "system", "content": section})


def _inline_tool_turns(
    messages: list[dict[str, Any]], call_format: CallFormat
) -> list[dict[str, Any]]:
    """Calls and results as plain text turns, for templates that only know
    system/user/assistant. Consecutive results become one user turn."""
    names: dict[str, str] = {}
    converted: list[dict[str, Any]] = []
    previous_was_result = False
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            parts = [str(message.get("content") or "")] if message.get("content") else []
            for call in message["tool_calls"]:
                function = call.get("function", {})
                names[str(call.get("id"))] = str(function.get("name"))
                parts.append(
                    format_call(function.get("name"), function.get("arguments"), call_format)
                )
            converted.append({"role": "assistant", "content": "\n".join(parts)})
            previous_was_result = False
        elif role == "tool":
            content = str(message.get("content") or "")
            name = message.get("name") or names.get(str(message.get("tool_call_id")), "")
            if call_format == "hermes":
                text = f"<tool_response>\n{content}\n</tool_response>"
            else:
                text = f"Result of {name}: {content}" if name else f"Tool result: {content}"
            if previous_was_result:
                converted[-1]["content"] += "\n" + text
            else:
                converted.append({"role": "user", "content": text})
            previous_was_result = True
        else:
            entry = dict(message)
            if role == "user" and previous_was_result:
                converted[-1]["content"] += "\n\n" + str(entry.get("content") or "")
            else:
                converted.append(entry)
            previous_was_result = False
    return converted


# ---- the grammar (llama.cpp) --------------------------------------------------------------

# JSON strings may not hold raw control characters; llama-cpp-python's converter allows them.
_CHAR_RULE = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_ANY_CHAR = "[\\U00000000-\\U0010FFFF]"
# Strings without a maxLength are held to STRING_CAP characters: a small model that starts
# repeating itself inside a string would otherwise run to max_tokens and never finish
# the call. A schema's own maxLength is kept as it is.
STRING_CAP = 100
# Likewise arrays without maxItems get at most ARRAY_CAP items (the converter writes
# them as `(item ("," space item)*)?`).
ARRAY_CAP = 8
_UNBOUNDED_ITEMS = re.compile(r'\("," space ([a-zA-Z0-9-]+)\)\*')
_UNBOUNDED_STRING = '"\\"" char* "\\"" space'
_BOUNDED_STRING = f'"\\"" char{{0,{STRING_CAP}}} "\\"" space'
_TOKEN = re.compile(
    r'"(?:\\.|[^"\\])*"'  # a literal
    r"|\[(?:\\.|[^\]\\])*\]"  # a character class
    r"|\{[0-9, ]*\}"  # a repetition count
    r"|[a-zA-Z0-9_-]+"  # a rule name
    r"|\s+|."
)
_NAME = re.compile(r"[a-zA-Z0-9_-]+")


class GrammarUnsupported(Exception):
    """The schema has features the JSON-schema-to-grammar converter does not handle."""


def schema_rules(schema: dict[str, Any], prefix: str) -> tuple[str, dict[str, str]]:
    """GBNF rules for a value matching ``schema``: the top rule's name and all rules,
    every name starting with ``prefix`` so several schemas live in one grammar."""
    from llama_cpp import llama_grammar

    converter_class: Any = llama_grammar.SchemaConverter  # untyped library code
    converter = converter_class(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "input")
        converter.visit(resolved, "")
    except Exception as exc:
        raise GrammarUnsupported(str(exc) or type(exc).__name__) from exc
    rules: dict[str, str] = dict(converter._rules)
    if "char" in rules:
        rules["char"] = _CHAR_RULE
    if rules.get("string") == _UNBOUNDED_STRING:
        rules["string"] = _BOUNDED_STRING
    for name, body in rules.items():
        rules[name] = _UNBOUNDED_ITEMS.sub(rf'("," space \1){{0,{ARRAY_CAP - 1}}}', body)
    names = set(rules)

    def rename(body: str) -> str:
        out: list[str] = []
        for token in _TOKEN.findall(body):
            out.append(f"{prefix}{token}" if _NAME.fullmatch(token) and token in names else token)
        return "".join(out)

    return f"{prefix}root", {f"{prefix}{name}": rename(body) for name, body in rules.items()}


def _literal(text: str) -> str:
    return json.dumps(text)  # GBNF literals take JSON-style escapes


def _no_marker_text(marker: str) -> str:
    """Any text that never contains ``marker`` (whose first character occurs once in it).

    A character other than the marker's first one is free; the first one must be followed
    by a divergence from the rest of the marker before the text goes on."""
    first = marker[0]
    tail = ""
    for index in range(len(marker) - 1, 0, -1):
        char = marker[index]
        excluded = "".join(sorted({first, char}))
        diverge = f"[^{_class_escape(excluded)}]"
        tail = f"{diverge} | {_literal(char)} ({tail})" if tail else diverge
    return f"([^{_class_escape(first)}] | {_literal(first)}+ ({tail}))*"


def _class_escape(chars: str) -> str:
    return "".join("\\" + c if c in "]\\^-[" else c for c in chars)


@dataclass(frozen=True)
class Grammar:
    gbnf: str
    # Tools whose argument schema could not be compiled: only "some JSON object" is
    # enforced for them, and server-side validation does the rest.
    loose_tools: tuple[str, ...] = ()
    loose_response: bool = False


def build_grammar(plan: OutputPlan, *, exact_schemas: bool = True) -> Grammar:
    """One GBNF grammar for the plan (llama.cpp engines only).

    A schema the converter cannot compile (or every schema, with ``exact_schemas``
    False: the fallback when llama.cpp refuses the exact grammar) is enforced only as
    "a JSON object"; the server's validation still checks it."""
    rules: dict[str, str] = {}
    loose: list[str] = []
    loose_response = False

    def value_rule(schema: dict[str, Any], prefix: str) -> tuple[str, bool]:
        try:
            if not exact_schemas:
                raise GrammarUnsupported("exact schemas turned off")
            top, found = schema_rules(schema, prefix)
            exact = True
        except GrammarUnsupported:
            top, found = schema_rules({"type": "object"}, prefix)
            exact = False
        rules.update(found)
        return top, exact

    root_alternatives: list[str] = []
    if plan.tools:
        call_rules: list[str] = []
        for index, tool in enumerate(plan.tools):
            arguments, exact = value_rule(tool.parameters, f"t{index}-")
            if not exact:
                loose.append(tool.name)
            head = '{"name": ' + _compact(tool.name) + ', "arguments": '
            if plan.call_format == "hermes":
                head = f"{CALL_OPEN}\n{head}"
                tail = "}\n" + CALL_CLOSE
            else:
                tail = "}"
            rules[f"call{index}"] = f"{_literal(head)} {arguments} {_literal(tail)}"
            call_rules.append(f"call{index}")
        rules["call"] = " | ".join(call_rules)
        rules["calls"] = 'call ("\\n" call)*' if plan.parallel else "call"
        root_alternatives.append("calls")
    if plan.mode in ("auto", "json"):
        if plan.response_schema is not None:
            top, exact = value_rule(plan.response_schema, "r-")
            loose_response = not exact
            root_alternatives.append(top)
        elif plan.call_format == "hermes":
            rules["text"] = _no_marker_text(CALL_OPEN)
            root_alternatives.append("text")
        else:
            rules["text"] = f"([^{{] {_ANY_CHAR}*)?"
            root_alternatives.append("text")
    rules["root"] = " | ".join(root_alternatives)
    gbnf = "\n".join(f"{name} ::= {body}" for name, body in rules.items())
    return Grammar(gbnf, tuple(loose), loose_response)


# ---- reading the reply --------------------------------------------------------------------


def new_call_id() -> str:
    return "call_" + secrets.token_urlsafe(18).replace("-", "a").replace("_", "b")[:24]


@dataclass(frozen=True)
class ParsedCall:
    id: str
    name: str
    arguments: str  # compact JSON text of an object that matches the tool's schema


@dataclass(frozen=True)
class ContentPiece:
    text: str


ReplyEvent = ContentPiece | ParsedCall


def schema_error(schema: dict[str, Any], instance: Any) -> str | None:
    """Why ``instance`` does not match ``schema``, or None when it does."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return None
    where = "".join(f"[{part!r}]" for part in error.absolute_path)
    return f"{error.message}" + (f" (at arguments{where})" if where else "")


def _arguments_text(arguments: Any) -> str:
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


@dataclass
class _Failure:
    message: str


def _decode_json(text: str) -> tuple[Any, str] | _Failure:
    """The first JSON value in ``text`` (after whitespace) and what follows it."""
    stripped = text.lstrip()
    try:
        value, end = json.JSONDecoder(strict=False).raw_decode(stripped)
    except json.JSONDecodeError as exc:
        return _Failure(f"the output is not valid JSON ({exc.msg} at character {exc.pos})")
    return value, stripped[end:]


class ReplyDecoder:
    """Turns generated text into content and validated tool calls, piece by piece.

    A reply is a tool-call reply only if it starts with a call (``<tool_call>`` in the
    Hermes format, ``{`` in the JSON format): then nothing of it is ever sent as content,
    and each call is released only once it is complete, parsed and valid (with a grammar
    engine as soon as its block closes; otherwise at the end, when the whole reply is
    known). In ``auto`` mode a reply that does not start with a call streams as content,
    and (without a grammar) a call-shaped reply that fails to parse or validate is
    returned as content. In the other modes a failure raises
    :class:`InvalidModelOutputError` saying what failed.
    """

    def __init__(self, plan: OutputPlan) -> None:
        self.plan = plan
        self.calls: list[ParsedCall] = []
        self.content: str | None = None
        # Set when the model repeats a call it has already made in this reply: small
        # models loop on parallel calls, and nothing after a repeat is worth reading.
        self.done = False
        self._buffer = ""
        self._state: Literal["undecided", "content", "calls", "json"] = "undecided"
        if plan.mode in ("required", "named"):
            self._state = "calls"
        elif plan.mode == "json":
            self._state = "json"
        self._marker = CALL_OPEN if plan.call_format == "hermes" else "{"

    # -- feeding --

    def feed(self, text: str) -> list[ReplyEvent]:
        if not text:
            return []
        if self._state == "content":
            return self._content(text)
        self._buffer += text
        if self._state == "undecided":
            head = self._buffer.lstrip()
            if not head or (len(head) < len(self._marker) and self._marker.startswith(head)):
                return []  # could still be the start of a call
            if head.startswith(self._marker):
                self._state = "calls"
            elif self.plan.response_schema is not None:
                self._state = "json"  # auto with a JSON reply format: held, then checked
            else:
                self._state = "content"
                buffered, self._buffer = self._buffer, ""
                return self._content(buffered)
        if self._state == "calls" and self._incremental:
            return self._release_complete_calls()
        return []

    @property
    def _incremental(self) -> bool:
        """Whether calls may be released one by one as they complete: only when a grammar
        guarantees their shape, and the reply cannot also be a JSON text reply."""
        plan = self.plan
        if not plan.grammar_engine or plan.arguments_only:
            return False
        return not (plan.call_format == "json" and plan.response_schema is not None)

    def _content(self, text: str) -> list[ReplyEvent]:
        self.content = (self.content or "") + text
        return [ContentPiece(text)]

    def _release_complete_calls(self) -> list[ReplyEvent]:
        """Grammar engines: release each call as soon as it is complete (and valid)."""
        events: list[ReplyEvent] = []
        while not self.done:
            block = self._next_block(final=False)
            if block is None:
                break
            call = self._parse_call(block)
            if isinstance(call, _Failure):
                raise self._error(call.message)
            if self._is_repeat(call):
                self.done = True
                self._buffer = ""
                break
            self.calls.append(call)
            events.append(call)
        return events

    def _is_repeat(self, call: ParsedCall) -> bool:
        return any(
            (earlier.name, earlier.arguments) == (call.name, call.arguments)
            for earlier in self.calls
        )

    def _next_block(self, *, final: bool) -> str | None:
        """Cut the next complete call's text off the buffer."""
        text = self._buffer.lstrip()
        if self.plan.call_format == "hermes":
            if not text.startswith(CALL_OPEN):
                return None
            end = text.find(CALL_CLOSE)
            if end < 0:
                return None
            self._buffer = text[end + len(CALL_CLOSE) :]
            return text[len(CALL_OPEN) : end]
        if not text.startswith("{"):
            return None
        decoded = _decode_json(text)
        if isinstance(decoded, _Failure):
            return None
        _value, rest = decoded
        consumed = text[: len(text) - len(rest)]
        self._buffer = rest
        return consumed

    # -- finishing --

    def finish(self, finish_reason: str) -> list[ReplyEvent]:
        """The generation ended: release what is left or fail."""
        truncated = finish_reason == "length" and not self.done
        if self._state == "content":
            return []
        if self._state == "undecided":
            # Ended while it could still have been a call (e.g. only "<tool").
            buffered, self._buffer = self._buffer, ""
            if not buffered.strip():
                return []
            return self._content(buffered)
        if self._state == "json":
            return self._finish_json(truncated)
        return self._finish_calls(truncated)

    def _finish_json(self, truncated: bool) -> list[ReplyEvent]:
        text, self._buffer = self._buffer.strip(), ""
        schema = self.plan.response_schema or {"type": "object"}
        if truncated:
            # As OpenAI does: a reply cut off by max_tokens is returned as it is, with
            # finish_reason "length"; the client must check it.
            return self._content(text) if text else []
        decoded = _decode_json(text)
        if isinstance(decoded, _Failure):
            raise self._json_error(decoded.message)
        value, rest = decoded
        if rest.strip():
            raise self._json_error("the output has text after the JSON value")
        problem = schema_error(schema, value)
        if problem is not None:
            raise self._json_error(f"the output does not match the schema: {problem}")
        return self._content(text)

    def _json_error(self, what: str) -> InvalidModelOutputError:
        return InvalidModelOutputError(
            f"The model did not produce a valid JSON reply for response_format: {what}."
        )

    def _finish_calls(self, truncated: bool) -> list[ReplyEvent]:
        events: list[ReplyEvent] = []
        raw = self._buffer
        if self.plan.arguments_only:
            self._buffer = ""
            if truncated and not raw.strip():
                return []
            call = self._parse_arguments(self.plan.tools[0], raw, truncated)
            if isinstance(call, _Failure):
                raise self._error(call.message, retryable=not truncated)
            self.calls.append(call)
            return [call]
        pending: list[ParsedCall] = []
        failure: _Failure | None = None
        while True:
            block = self._next_block(final=True)
            if block is None:
                break
            call = self._parse_call(block)
            if isinstance(call, _Failure):
                failure = call
                break
            if self._is_repeat(call) or any(
                (p.name, p.arguments) == (call.name, call.arguments) for p in pending
            ):
                self._buffer = ""
                break
            pending.append(call)
        leftover = self._buffer.strip()
        self._buffer = ""
        if failure is None and leftover and not truncated:
            failure = self._describe_leftover(leftover)
        if failure is not None and not self.calls and self.plan.mode == "auto":
            if self.plan.response_schema is not None and not raw.lstrip().startswith(CALL_OPEN):
                # A JSON reply, not a call (both start with "{" in the JSON format).
                self._buffer = raw
                return self._finish_json(truncated)
            if not self.plan.grammar_engine:
                # auto without a grammar: a reply that looked like a call but is not a
                # valid one is the model's text reply.
                return self._content(raw.strip())
        if failure is not None:
            raise self._error(failure.message)
        if not self.calls and not pending:
            if truncated:
                raise self._error(
                    "the reply was cut off by max_tokens before the first tool call was "
                    "complete; raise max_tokens",
                    retryable=False,
                )
            raise self._error("the output holds no tool call")
        self.calls.extend(pending)
        events.extend(pending)
        return events

    def _describe_leftover(self, leftover: str) -> _Failure:
        if self.plan.call_format == "hermes" and leftover.startswith(CALL_OPEN):
            return _Failure(f"a {CALL_OPEN} block is not closed with {CALL_CLOSE}")
        if not leftover.startswith(self._marker):
            if self.plan.call_format == "json":
                return _Failure(f"the output is not valid JSON: {leftover[:80]!r}")
            return _Failure(f"the output holds no tool call: {leftover[:80]!r}")
        decoded = _decode_json(leftover)
        if isinstance(decoded, _Failure):
            return decoded
        return _Failure(f"the output is not a tool call: {leftover[:80]!r}")

    def _parse_call(self, block: str) -> ParsedCall | _Failure:
        decoded = _decode_json(block)
        if isinstance(decoded, _Failure):
            return decoded
        value, rest = decoded
        if rest.strip():
            return _Failure("a tool call has text after its JSON object")
        if not isinstance(value, dict):
            return _Failure("a tool call is not a JSON object")
        name = value.get("name")
        if not isinstance(name, str):
            return _Failure('a tool call has no "name" string')
        tool = self.plan.tool(name)
        if tool is None:
            allowed = ", ".join(t.name for t in self.plan.tools)
            return _Failure(
                f"the model called {name!r}, which is not an allowed function ({allowed})"
            )
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return _Failure(f"the arguments of {name!r} are not valid JSON")
        return self._checked(tool, arguments)

    def _parse_arguments(self, tool: ToolSpec, raw: str, truncated: bool) -> ParsedCall | _Failure:
        if truncated:
            return _Failure(
                "the reply was cut off by max_tokens before the arguments were complete; "
                "raise max_tokens"
            )
        decoded = _decode_json(raw)
        if isinstance(decoded, _Failure):
            return _Failure(f"the arguments of {tool.name!r}: {decoded.message}")
        value, rest = decoded
        if rest.strip():
            return _Failure(f"the arguments of {tool.name!r} are followed by other text")
        return self._checked(tool, value)

    def _checked(self, tool: ToolSpec, arguments: Any) -> ParsedCall | _Failure:
        if not isinstance(arguments, dict):
            return _Failure(f"the arguments of {tool.name!r} are not a JSON object")
        problem = schema_error(tool.parameters, arguments)
        if problem is not None:
            return _Failure(
                f"the arguments of {tool.name!r} do not match its parameters schema: {problem}"
            )
        return ParsedCall(new_call_id(), tool.name, _arguments_text(arguments))

    def _error(self, what: str, *, retryable: bool = True) -> InvalidModelOutputError:
        error = InvalidModelOutputError(f"The model did not produce a valid tool call: {what}.")
        error.retryable = retryable
        return error


# ---- streaming helpers --------------------------------------------------------------------


def argument_fragments(arguments: str, size: int = 24) -> list[str]:
    """The arguments text in pieces, as a stream sends them; they join to the whole."""
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


@dataclass
class DecodedReply:
    content: str | None
    calls: list[ParsedCall] = field(default_factory=list)


def decode_all(plan: OutputPlan, pieces: Sequence[str], finish_reason: str) -> DecodedReply:
    """Run the decoder over a whole reply (tests and non-streamed replies)."""
    decoder = ReplyDecoder(plan)
    for piece in pieces:
        decoder.feed(piece)
    decoder.finish(finish_reason)
    return DecodedReply(decoder.content, list(decoder.calls))
