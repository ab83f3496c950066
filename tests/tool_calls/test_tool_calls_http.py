"""Tool calls and structured output through the official openai SDK: the embedded SmolLM2
on llama.cpp (grammar-constrained), and PicoLM through its stand-in executable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import requires_llama
from tests.support.picolm_setup import MODEL_ID as PICOLM_MODEL
from tests.support.picolm_setup import PicoLMFiles
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf
from tests.tool_calls.test_tool_calls import WEATHER

LLAMA_MODEL = "SmolLM2-135M-Instruct"

WEATHER_PARAMS = WEATHER["function"]["parameters"]
EMAIL_PARAMS = {
    "type": "object",
    "properties": {
        "to": {"type": "string"},
        "subject": {"type": "string"},
        "urgent": {"type": "boolean"},
    },
    "required": ["to", "subject"],
}
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": WEATHER_PARAMS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "send_email",
            "description": "Send an email",
            "parameters": EMAIL_PARAMS,
            "strict": True,
        },
    },
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "send_email": EMAIL_PARAMS}
NAMED_EMAIL = {"type": "function", "function": {"name": "send_email"}}


def assert_valid_calls(message: Any, allowed: set[str]) -> list[Any]:
    calls = message.tool_calls or []
    for call in calls:
        assert call.type == "function"
        assert call.id.startswith("call_")
        assert call.function.name in allowed
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({call.id for call in calls}) == len(calls)
    return calls


def reassemble(stream: Any) -> tuple[str | None, list[dict[str, Any]], str | None]:
    """Content, calls and finish_reason from stream chunks, checking OpenAI's delta rules."""
    content: str | None = None
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        delta = choice.delta
        if delta.content:
            content = (content or "") + delta.content
        for part in delta.tool_calls or []:
            if part.index not in calls:
                # The first delta of a call carries its id, type and name.
                assert part.id and part.type == "function" and part.function.name
                calls[part.index] = {
                    "id": part.id,
                    "name": part.function.name,
                    "arguments": part.function.arguments or "",
                }
            else:
                assert part.id is None and part.function.name is None
                calls[part.index]["arguments"] += part.function.arguments or ""
        if choice.finish_reason:
            finish = choice.finish_reason
    return content, [calls[i] for i in sorted(calls)], finish


def plain(calls: Any) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in calls]


# ---- the embedded model through llama.cpp ------------------------------------------------------

pytestmark_llama = [requires_llama, pytest.mark.llama]


@pytest.fixture(scope="module")
def client(llama_server: Any) -> openai.OpenAI:
    return llama_server.client(max_retries=0)  # type: ignore[no-any-return]


def ask(client: openai.OpenAI, question: str, **kwargs: Any) -> Any:
    params: dict[str, Any] = {"tools": TOOLS, "temperature": 0, "max_tokens": 80, "seed": 1}
    params.update(kwargs)
    return client.chat.completions.create(
        model=LLAMA_MODEL, messages=[{"role": "user", "content": question}], **params
    )


@requires_llama
@pytest.mark.llama
@pytest.mark.parametrize(
    ("question", "choice", "allowed"),
    [
        ("What's the weather in Paris?", "required", {"get_weather", "send_email"}),
        ("Email bob@example.com about lunch", "required", {"get_weather", "send_email"}),
        ("What's the weather in Paris?", NAMED_EMAIL, {"send_email"}),
        (
            "Tell bob@example.com it rains",
            {"type": "function", "function": {"name": "get_weather"}},
            {"get_weather"},
        ),
    ],
)
def test_required_and_named_always_call_an_allowed_function(
    client: openai.OpenAI, question: str, choice: Any, allowed: set[str]
) -> None:
    completion = ask(client, question, tool_choice=choice)
    choice_ = completion.choices[0]
    calls = assert_valid_calls(choice_.message, allowed)
    assert calls
    assert choice_.finish_reason == "tool_calls"
    assert choice_.message.content is None
    if choice is NAMED_EMAIL or isinstance(choice, dict):
        assert len(calls) == 1


@requires_llama
@pytest.mark.llama
@pytest.mark.parametrize("question", ["What's the weather in Paris?", "Hi! How are you?"])
def test_auto_is_text_or_valid_calls(client: openai.OpenAI, question: str) -> None:
    choice = ask(client, question, tool_choice="auto").choices[0]
    calls = assert_valid_calls(choice.message, {"get_weather", "send_email"})
    if calls:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
    else:
        assert choice.finish_reason in ("stop", "length")
        assert "<tool_call>" not in (choice.message.content or "")


@requires_llama
@pytest.mark.llama
def test_none_never_calls(client: openai.OpenAI) -> None:
    choice = ask(client, "What's the weather in Paris?", tool_choice="none").choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content


@requires_llama
@pytest.mark.llama
def test_parallel_calls(client: openai.OpenAI) -> None:
    choice = ask(
        client,
        "What's the weather in Paris and in Berlin?",
        tool_choice="required",
        tools=TOOLS[:1],
        max_tokens=120,
    ).choices[0]
    calls = assert_valid_calls(choice.message, {"get_weather"})
    assert len(calls) >= 1
    assert len(set(plain(calls))) == len(calls)  # repeats are cut, not returned
    single = ask(
        client,
        "What's the weather in Paris and in Berlin?",
        tool_choice="required",
        tools=TOOLS[:1],
        parallel_tool_calls=False,
    ).choices[0]
    assert len(assert_valid_calls(single.message, {"get_weather"})) == 1


@requires_llama
@pytest.mark.llama
@pytest.mark.parametrize("choice", ["required", NAMED_EMAIL, "auto"])
def test_streamed_calls_reassemble_exactly(client: openai.OpenAI, choice: Any) -> None:
    question = "Send an email to ann@example.com about the weather in Oslo"
    whole = ask(client, question, tool_choice=choice).choices[0]
    stream = ask(client, question, tool_choice=choice, stream=True)
    content, calls, finish = reassemble(stream)
    assert finish == whole.finish_reason
    assert content == whole.message.content
    assert [(c["name"], c["arguments"]) for c in calls] == plain(whole.message.tool_calls or [])


@requires_llama
@pytest.mark.llama
def test_tool_results_are_fed_back(client: openai.OpenAI) -> None:
    first = ask(client, "What's the weather in Paris?", tool_choice="required", tools=TOOLS[:1])
    call = first.choices[0].message.tool_calls[0]
    messages: list[Any] = [
        {"role": "user", "content": "What's the weather in Paris?"},
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 degrees celsius"},
    ]
    second = client.chat.completions.create(
        model=LLAMA_MODEL,
        messages=messages,
        tools=TOOLS,
        tool_choice="none",
        temperature=0,
        max_tokens=40,
    )
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content
    # auto after a result: whatever the model does, any call is valid.
    third = client.chat.completions.create(
        model=LLAMA_MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=60
    )
    assert_valid_calls(third.choices[0].message, {"get_weather", "send_email"})


@requires_llama
@pytest.mark.llama
@pytest.mark.parametrize(
    ("question", "result"),
    [
        ("What is the weather like in Tokyo right now?", "22 degrees and raining"),
        ("Is it cold in Oslo today?", "-3C, snow"),
    ],
)
def test_the_answer_after_a_tool_result_does_not_echo_its_wrapper(
    client: openai.OpenAI, question: str, result: str
) -> None:
    # SmolLM2 copies the <tool_response> wrapper of the result it was shown.
    first = ask(client, question, tool_choice="required", tools=TOOLS[:1], max_tokens=40)
    call = first.choices[0].message.tool_calls[0]
    messages: list[Any] = [
        {"role": "user", "content": question},
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]
    params: dict[str, Any] = {
        "model": LLAMA_MODEL,
        "messages": messages,
        "tools": TOOLS[:1],
        "temperature": 0,
        "max_tokens": 40,
    }
    whole = client.chat.completions.create(**params).choices[0].message
    streamed, streamed_calls, _ = reassemble(client.chat.completions.create(stream=True, **params))
    if whole.tool_calls:  # another call is a valid answer too
        assert streamed_calls
        return
    assert whole.content and streamed == whole.content
    assert "<tool_response>" not in whole.content and "</tool_response>" not in whole.content


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "hobbies": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "hobbies"],
    "additionalProperties": False,
}


@requires_llama
@pytest.mark.llama
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_replies_validate(client: openai.OpenAI, stream: bool) -> None:
    params: dict[str, Any] = {
        "model": LLAMA_MODEL,
        "messages": [{"role": "user", "content": "Describe Ann, 30, who likes chess."}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "strict": True, "schema": PERSON},
        },
        "temperature": 0,
        "max_tokens": 80,
    }
    if stream:
        content, calls, finish = reassemble(client.chat.completions.create(stream=True, **params))
        assert not calls
    else:
        choice = client.chat.completions.create(**params).choices[0]
        content, finish = choice.message.content, choice.finish_reason
    assert finish == "stop"
    jsonschema.validate(json.loads(content or ""), PERSON)


def content_deltas(stream: Any) -> list[str]:
    return [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]


@requires_llama
@pytest.mark.llama
def test_json_replies_stream_in_pieces_that_join_to_the_whole_reply(
    client: openai.OpenAI,
) -> None:
    params: dict[str, Any] = {
        "model": LLAMA_MODEL,
        "messages": [{"role": "user", "content": "Describe Ann, 30, who likes chess."}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "strict": True, "schema": PERSON},
        },
        "temperature": 0,
        "max_tokens": 80,
    }
    whole = client.chat.completions.create(**params).choices[0].message.content
    pieces = content_deltas(client.chat.completions.create(stream=True, **params))
    assert len(pieces) > 3  # not one delta at the end
    assert "".join(pieces) == whole
    jsonschema.validate(json.loads(whole or ""), PERSON)


@requires_llama
@pytest.mark.llama
def test_json_object_replies_parse(client: openai.OpenAI) -> None:
    choice = client.chat.completions.create(
        model=LLAMA_MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=60,
    ).choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content or ""), dict)


@requires_llama
@pytest.mark.llama
def test_invalid_schemas_are_400s_naming_the_param(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=LLAMA_MODEL,
            messages=[{"role": "user", "content": "hi"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "strict": True, "schema": {"type": "nope"}},
            },
        )
    assert caught.value.body["param"] == "response_format.json_schema.schema"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "hi", tool_choice={"type": "function", "function": {"name": "missing"}})
    assert caught.value.body["param"] == "tool_choice"  # type: ignore[index]


@requires_llama
@pytest.mark.llama
def test_a_schema_the_grammar_cannot_enforce_never_yields_an_invalid_call(
    llama_server: Any,
) -> None:
    # The grammar cannot express "multipleOf" (it holds numbers to their bounds, not to
    # this); the server's validation must catch it.
    params = {
        "type": "object",
        "properties": {"n": {"type": "integer", "multipleOf": 1000003}},
        "required": ["n"],
    }
    body = {
        "model": LLAMA_MODEL,
        "messages": [{"role": "user", "content": "Pick the number 7"}],
        "tools": [{"type": "function", "function": {"name": "pick", "parameters": params}}],
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 30,
    }
    response = httpx.post(
        f"{llama_server.openai_base_url}/chat/completions", json=body, timeout=120
    )
    if response.status_code == 200:
        call = response.json()["choices"][0]["message"]["tool_calls"][0]
        jsonschema.validate(json.loads(call["function"]["arguments"]), params)
    else:
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["code"] == "invalid_model_output"
        assert "multiple" in error["message"]
        assert response.headers["x-should-retry"] == "false"  # greedy: a retry repeats it


# ---- PicoLM through the stand-in --------------------------------------------------------------


@pytest.fixture(scope="module")
def pico(picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The server on the PicoLM stand-in, with a model whose context fits tool prompts."""
    root = tmp_path_factory.mktemp("picolm-tools")
    model = build_tiny_llama_gguf(root / "tiny-4k.gguf", context_length=4096)
    with picolm_files.serve(
        root, picolm={"model_path": str(model), "context_length": 4096, "max_tokens": 64}
    ) as server:
        yield server


def pico_ask(server: Any, reply: str, **kwargs: Any) -> Any:
    client = server.client(max_retries=0)
    params: dict[str, Any] = {"tools": TOOLS, "temperature": 0, "max_tokens": 40}
    params.update(kwargs)
    return client.chat.completions.create(
        model=PICOLM_MODEL,
        messages=[{"role": "user", "content": f"Do it [[reply:{reply}]]"}],
        **params,
    )


def pico_argv(server: Any, reply: str) -> list[str]:
    runs = server.runs_with(f"[[reply:{reply}]]")
    assert runs
    return list(runs[-1].argv)


def test_picolm_required_call(pico: Any) -> None:
    reply = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
    choice = pico_ask(pico, reply, tool_choice="required").choices[0]
    calls = assert_valid_calls(choice.message, {"get_weather", "send_email"})
    assert plain(calls) == [("get_weather", '{"city":"Paris","unit":"celsius"}')]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    # The model wrote the whole call as the schema has it: one run, held to no --json.
    runs = pico.runs_with(f"[[reply:{reply}]]")
    assert len(runs) == 1
    assert "--json" not in runs[0].argv


def test_picolm_named_call_asks_for_the_arguments_only(pico: Any) -> None:
    reply = '{"to": "ann@example.com", "subject": "Hello"}'
    choice = pico_ask(pico, reply, tool_choice=NAMED_EMAIL).choices[0]
    assert plain(choice.message.tool_calls) == [
        ("send_email", '{"to":"ann@example.com","subject":"Hello"}')
    ]
    runs = pico.runs_with(f"[[reply:{reply}]]")
    assert "Call the function `send_email` now" in runs[-1].prompt
    # The server wrote the fixed start of the arguments; the model went on from there.
    assert runs[-1].prompt.endswith('{"to": "')


@pytest.mark.parametrize(
    ("reply", "choice", "allowed"),
    [
        ("this is not json", "required", {"get_weather", "send_email"}),
        ('{"name": "get_weather", "arguments": {"town": "Paris"}}', "required", {"get_weather"}),
        ('{"name": "rm_rf", "arguments": {}}', "required", {"get_weather", "send_email"}),
        ('{"name": "send_email", "arguments": {"to": 5}}', "required", {"send_email"}),
        ('{"to": 5, "subject": "x"}', NAMED_EMAIL, {"send_email"}),
        ("Paris please", NAMED_EMAIL, {"send_email"}),
    ],
)
def test_picolm_forced_calls_always_validate(
    pico: Any, reply: str, choice: Any, allowed: set[str]
) -> None:
    """Whatever the model writes, required and named choices get a call that parses and
    validates: the server writes the schema's fixed parts and only the free ones are
    the model's."""
    completion = pico_ask(pico, reply, tool_choice=choice).choices[0]
    calls = assert_valid_calls(completion.message, allowed)
    assert len(calls) == 1
    assert completion.finish_reason == "tool_calls"


def test_picolm_forced_call_keeps_what_the_model_got_right(pico: Any) -> None:
    # "town" is no parameter: the server writes "city" and the model goes on from there.
    reply = '{"name": "get_weather", "arguments": {"town": "Paris"}}'
    call = pico_ask(pico, reply, tool_choice="required").choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) <= {"city", "unit"}
    runs = pico.runs_with(f"[[reply:{reply}]]")
    assert runs[-1].prompt.endswith('{"name": "get_weather", "arguments": {"city": "')


@pytest.mark.parametrize(
    "reply",
    ["Sunny all day.", "{not json at all", '{"name": "get_weather", "arguments": {"town": "x"}}'],
)
def test_picolm_auto_returns_text_and_bad_calls_as_content(pico: Any, reply: str) -> None:
    choice = pico_ask(pico, reply).choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content == reply
    assert choice.finish_reason == "stop"
    assert "--json" not in pico_argv(pico, reply)


def test_picolm_auto_call(pico: Any) -> None:
    reply = '{"name": "send_email", "arguments": {"to": "a@b.c", "subject": "s", "urgent": true}}'
    choice = pico_ask(pico, reply, tool_choice="auto").choices[0]
    assert plain(choice.message.tool_calls) == [
        ("send_email", '{"to":"a@b.c","subject":"s","urgent":true}')
    ]


@pytest.mark.parametrize(
    ("reply", "choice"),
    [
        ('{"name": "get_weather", "arguments": {"city": "Rome"}}', "required"),
        ('{"to": "x@y.z", "subject": "streamed"}', NAMED_EMAIL),
        ("Just words here.", "auto"),
    ],
)
def test_picolm_streamed_calls_reassemble_exactly(pico: Any, reply: str, choice: Any) -> None:
    whole = pico_ask(pico, reply, tool_choice=choice).choices[0]
    content, calls, finish = reassemble(pico_ask(pico, reply, tool_choice=choice, stream=True))
    assert finish == whole.finish_reason
    assert content == whole.message.content
    assert [(c["name"], c["arguments"]) for c in calls] == plain(whole.message.tool_calls or [])


def test_picolm_engine_failure_in_a_stream_is_reported_in_band(pico: Any) -> None:
    client = pico.client(max_retries=0)
    with pytest.raises(openai.APIError) as caught:
        for _ in client.chat.completions.create(
            model=PICOLM_MODEL,
            messages=[{"role": "user", "content": "[[crash]]"}],
            tools=TOOLS,
            tool_choice="required",
            temperature=0,
            stream=True,
        ):
            pass
    assert "exited with status 3" in str(caught.value)


def test_picolm_json_schema(pico: Any) -> None:
    client = pico.client(max_retries=0)

    def ask_json(reply: str) -> Any:
        return client.chat.completions.create(
            model=PICOLM_MODEL,
            messages=[{"role": "user", "content": f"[[reply:{reply}]]"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "strict": True, "schema": PERSON},
            },
            temperature=0,
        )

    good = '{"name": "Ann", "age": 30, "hobbies": ["chess"]}'
    assert ask_json(good).choices[0].message.content == good
    # No "age": the server writes the key, the model only the value.
    content = ask_json('{"name": "Ann", "hobbies": []}').choices[0].message.content
    assert content.startswith('{"name": "Ann", "age": ')
    jsonschema.validate(json.loads(content), PERSON)


def test_picolm_json_schema_streams_in_pieces(pico: Any) -> None:
    client = pico.client(max_retries=0)
    good = '{"name": "Ann", "age": 30, "hobbies": ["chess", "go"]}'
    params: dict[str, Any] = {
        "model": PICOLM_MODEL,
        "messages": [{"role": "user", "content": f"[[reply:{good}]] [[slow:0.02]]"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "strict": True, "schema": PERSON},
        },
        "temperature": 0,
    }
    pieces = content_deltas(client.chat.completions.create(stream=True, **params))
    assert len(pieces) > 3
    assert "".join(pieces) == good
    assert client.chat.completions.create(**params).choices[0].message.content == good


def test_picolm_conversation_with_results_is_rendered(pico: Any) -> None:
    client = pico.client(max_retries=0)
    marker = "[[reply:It is sunny in Paris.]]"
    completion = client.chat.completions.create(
        model=PICOLM_MODEL,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_abc", "content": "sunny " + marker},
        ],
        tools=TOOLS,
        temperature=0,
    )
    assert completion.choices[0].message.content == "It is sunny in Paris."
    prompt = pico.runs_with(marker)[-1].prompt
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "Result of get_weather: sunny" in prompt
