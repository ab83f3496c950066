"""Tool calls and structured output from the embedded SmolLM2 on llama.cpp, through the
official openai SDK on a real server: what the real model writes under the grammar is
always a valid call (or, in ``auto``, text), and streamed replies match whole ones. The
wire format itself is tested in-process in test_tool_calls_http.py."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import requires_llama
from tests.tool_calls.test_tool_calls_http import (
    NAMED_EMAIL,
    PERSON,
    PERSON_FORMAT,
    TOOLS,
    assert_valid_calls,
    content_deltas,
    plain,
    reassemble,
)

LLAMA_MODEL = "SmolLM2-135M-Instruct"


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


@requires_llama
@pytest.mark.llama
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_replies_validate(client: openai.OpenAI, stream: bool) -> None:
    params: dict[str, Any] = {
        "model": LLAMA_MODEL,
        "messages": [{"role": "user", "content": "Describe Ann, 30, who likes chess."}],
        "response_format": PERSON_FORMAT,
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


@requires_llama
@pytest.mark.llama
def test_json_replies_stream_in_pieces_that_join_to_the_whole_reply(
    client: openai.OpenAI,
) -> None:
    params: dict[str, Any] = {
        "model": LLAMA_MODEL,
        "messages": [{"role": "user", "content": "Describe Ann, 30, who likes chess."}],
        "response_format": PERSON_FORMAT,
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
