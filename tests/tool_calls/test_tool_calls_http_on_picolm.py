"""Tool calls and structured output on a real server driving the PicoLM stand-in, where
the engine is the point: the schema-exact JSON writer (the server writes a call's fixed
parts, the model only the free ones), the prompt and arguments that reach the process,
its exit status in a stream. The wire format itself is tested in-process in
test_tool_calls_http.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from tests.support.picolm_setup import MODEL_ID as PICOLM_MODEL
from tests.support.picolm_setup import PicoLMFiles
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf
from tests.tool_calls.test_tool_calls_http import (
    NAMED_EMAIL,
    PERSON,
    TOOLS,
    assert_valid_calls,
    content_deltas,
    plain,
    reassemble,
    with_result,
)


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
        messages=with_result("sunny " + marker),
        tools=TOOLS,
        temperature=0,
    )
    assert completion.choices[0].message.content == "It is sunny in Paris."
    prompt = pico.runs_with(marker)[-1].prompt
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "Result of get_weather: sunny" in prompt
