"""LangChain's ``ChatOllama`` and ``OllamaEmbeddings`` (langchain-ollama) and LiteLLM's
``ollama_chat/`` provider against real servers: SmolLM2 on llama.cpp and the PicoLM
stand-in, as far as each engine can (PicoLM has no embeddings; SmolLM2-135M does not
choose a tool call by itself, so calls are directed on the stand-in)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from tests.support.both_engines import ENGINES, Target, target_for

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture(params=ENGINES)
def target(request: pytest.FixtureRequest) -> Target:
    return target_for(request)


def said(target: Target, text: str, reply: str) -> str:
    return text + (f" [[reply:{reply}]]" if target.picolm is not None else "")


def chat_model(target: Target, **kwargs: Any) -> Any:
    from langchain_ollama import ChatOllama

    return ChatOllama(
        model=target.model,
        base_url=target.server.base_url,
        client_kwargs={"headers": target.headers},
        num_predict=48,
        temperature=0,
        **kwargs,
    )


def test_chat_ollama_invoke_and_stream(target: Target) -> None:
    llm = chat_model(target)
    message = llm.invoke(said(target, "Say hello.", "Hello there"))
    assert message.content
    assert message.usage_metadata and message.usage_metadata["output_tokens"] > 0
    pieces = [chunk.content for chunk in llm.stream(said(target, "Say hello.", "Hello there"))]
    assert "".join(str(p) for p in pieces) == message.content


def test_chat_ollama_bind_tools(target: Target) -> None:
    llm = chat_model(target).bind_tools([WEATHER])
    message = llm.invoke(said(target, "Weather in Paris?", CALL))
    if target.picolm is not None:
        assert message.tool_calls[0]["name"] == "get_weather"
        assert message.tool_calls[0]["args"] == {"city": "Paris"}
    else:  # the model chose text or a call; either way a call is well-formed
        assert message.content or message.tool_calls
        for call in message.tool_calls:
            assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)


def test_chat_ollama_with_structured_output(target: Target) -> None:
    llm = chat_model(target, num_ctx=None).with_structured_output(Person, method="json_schema")
    person = llm.invoke(said(target, "Invent a person.", '{"name": "Ada", "age": 36}'))
    assert isinstance(person, Person)
    if target.picolm is not None:
        assert person == Person(name="Ada", age=36)


def test_ollama_embeddings(target: Target) -> None:
    if target.picolm is not None:
        pytest.skip("PicoLM has no embeddings (the server answers 400)")
    from langchain_ollama import OllamaEmbeddings

    embeddings = OllamaEmbeddings(
        model=target.model,
        base_url=target.server.base_url,
        client_kwargs={"headers": target.headers},
    )
    vectors = embeddings.embed_documents(["hello world", "goodbye"])
    query = embeddings.embed_query("hello world")
    assert len(vectors) == 2 and len(query) == len(vectors[0]) > 100
    assert query == pytest.approx(vectors[0])


def test_litellm_ollama_chat(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    common: dict[str, Any] = {
        "model": f"ollama_chat/{target.model}",
        "api_base": target.server.base_url,
        "messages": [{"role": "user", "content": said(target, "Say hello.", "Hello there")}],
        "max_tokens": 24,
        "temperature": 0,
    }
    if target.picolm is not None:
        common["api_key"] = target.headers["Authorization"].removeprefix("Bearer ")
    response: Any = litellm.completion(**common)
    text = response.choices[0].message.content
    assert text and response.usage.completion_tokens > 0
    streamed = "".join(
        chunk.choices[0].delta.content or "" for chunk in litellm.completion(stream=True, **common)
    )
    assert streamed == text
    if target.picolm is not None:
        tools = {**common, "tools": [WEATHER]}
        tools["messages"] = [{"role": "user", "content": said(target, "Weather?", CALL)}]
        called: Any = litellm.completion(**tools)
        (call,) = called.choices[0].message.tool_calls
        assert call.function.name == "get_weather"
        assert call.function.arguments == '{"city": "Paris"}'
