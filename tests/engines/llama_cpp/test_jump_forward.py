"""Jump-forward on the real model (SmolLM2-135M-Instruct, greedy): the text a grammar
fixes is written by the engine, the rest generated, and replies stay schema-valid and
the same as with jump-forward off (llama.cpp's grammar, token by token), through the
openai SDK over the in-process server, streamed and not."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from picolm_server.config.settings import Settings
from picolm_server.engines.base import Finished, GenerationRequest, OutputConstraint
from tests.conftest import requires_llama
from tests.support.inprocess import InProcessServer, serve_in_process

pytestmark = [pytest.mark.llama, requires_llama]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string"},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


def function(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


BOOK_TABLE = function(
    "book_table",
    "Book a table at a restaurant.",
    {
        "type": "object",
        "properties": {
            "restaurant": {"type": "string", "description": "name of the restaurant"},
            "people": {"type": "integer", "description": "number of guests"},
            "time": {"type": "string", "description": "time of the booking, e.g. 19:30"},
        },
        "required": ["restaurant", "people", "time"],
    },
)
WEATHER = function(
    "get_weather",
    "Get the current weather for a city",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
    },
)
EMAIL = function(
    "send_email",
    "Send an email",
    {
        "type": "object",
        "properties": {
            "to": {"type": "string"},
            "subject": {"type": "string"},
            "body": {"type": "string"},
            "cc": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["to", "subject", "body"],
        "additionalProperties": False,
    },
)
EVENT = function(
    "create_event",
    "Create a calendar event",
    {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "date": {"type": "string", "format": "date"},
            "duration_minutes": {"type": "number"},
            "priority": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        },
        "required": ["title", "date", "duration_minutes", "priority"],
    },
)
SEARCH = function(
    "search_web",
    "Search the web",
    {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "max_results": {"type": "integer", "minimum": 1, "maximum": 10},
            "safe": {"type": "boolean"},
        },
        "required": ["query", "max_results", "safe"],
    },
)


def named(tool: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": tool["function"]["name"]}}


# name -> (question, request parameters)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "person": (
        "Invent a person who lives in a city by the sea. Reply with their name, age and "
        "city as JSON.",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "person", "strict": True, "schema": PERSON},
            }
        },
    ),
    "book_table": (
        "Please book a table for four people at Luigi's Trattoria tonight at half past seven.",
        {"tools": [BOOK_TABLE], "tool_choice": named(BOOK_TABLE)},
    ),
    "weather": (
        "What's the weather like in Paris today, in celsius?",
        {"tools": [WEATHER, EMAIL], "tool_choice": "required"},
    ),
    "email": (
        "Email alice@example.com that the meeting moved to Friday.",
        {"tools": [EMAIL, EVENT], "tool_choice": named(EMAIL)},
    ),
    "event": (
        "Schedule a dentist appointment on 2025-03-14 for 30 minutes.",
        {"tools": [EVENT], "tool_choice": named(EVENT)},
    ),
    "search": (
        "Find recent news about the Mars rover.",
        {"tools": [SEARCH, WEATHER], "tool_choice": named(SEARCH), "parallel_tool_calls": False},
    ),
}
SCHEMAS = {
    "person": PERSON,
    **{
        tool["function"]["name"]: tool["function"]["parameters"]
        for tool in (BOOK_TABLE, WEATHER, EMAIL, EVENT, SEARCH)
    },
}


def make_engine(jump_forward: bool) -> Any:
    from picolm_server.engines.llama_cpp.engine import LlamaCppEngine, LlamaCppOptions
    from picolm_server.models.embedded import EMBEDDED_MODEL_ID
    from picolm_server.server.bootstrap import embedded_model_path

    return LlamaCppEngine(
        LlamaCppOptions(
            model_path=embedded_model_path(),
            model_id=EMBEDDED_MODEL_ID,
            context_length=2048,
            threads=2,
            slots=1,
            cache_max_bytes=0,
            jump_forward=jump_forward,
        )
    )


@pytest.fixture(scope="module")
def event_loop_runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module")
def servers(event_loop_runner: asyncio.Runner) -> Iterator[dict[bool, InProcessServer]]:
    """The in-process server on an engine with jump-forward (True) and one without."""
    stack = contextlib.AsyncExitStack()
    made: dict[bool, InProcessServer] = {}
    try:
        for on in (True, False):
            made[on] = event_loop_runner.run(
                stack.enter_async_context(
                    serve_in_process(make_engine(on), server={"max_concurrent": 1})
                )
            )
        yield made
    finally:
        event_loop_runner.run(stack.aclose())


@pytest.fixture(scope="module")
def engines(servers: dict[bool, InProcessServer]) -> dict[bool, Any]:
    return {on: server.engine for on, server in servers.items()}


def ask(server: InProcessServer, runner: asyncio.Runner, name: str, stream: bool) -> dict[str, Any]:
    """The reply to case ``name``: its content, calls and finish reason (and usage when
    not streamed)."""
    question, params = CASES[name]

    async def run() -> dict[str, Any]:
        if True:
            client = server.client()
            request = {
                "model": server.engine.model.id,
                "messages": [{"role": "user", "content": question}],
                "temperature": 0,
                "max_tokens": 120,
                **params,
            }
            if not stream:
                reply = await client.chat.completions.create(**request)
                choice = reply.choices[0]
                calls = [
                    (c.function.name, c.function.arguments) for c in choice.message.tool_calls or []
                ]
                return {
                    "content": choice.message.content,
                    "calls": calls,
                    "finish": choice.finish_reason,
                    "completion_tokens": reply.usage.completion_tokens if reply.usage else None,
                }
            content: str | None = None
            parts: dict[int, list[str]] = {}
            finish = None
            chunks = await client.chat.completions.create(stream=True, **request)
            async for chunk in chunks:
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if delta.content:
                    content = (content or "") + delta.content
                for part in delta.tool_calls or []:
                    entry = parts.setdefault(part.index, ["", ""])
                    entry[0] += part.function.name or "" if part.function else ""
                    entry[1] += part.function.arguments or "" if part.function else ""
                finish = chunk.choices[0].finish_reason or finish
            return {
                "content": content,
                "calls": [(parts[i][0], parts[i][1]) for i in sorted(parts)],
                "finish": finish,
            }

    return runner.run(run())


def check_valid(name: str, reply: dict[str, Any]) -> None:
    if name == "person":
        assert reply["finish"] == "stop"
        jsonschema.validate(json.loads(reply["content"]), PERSON)
        return
    assert reply["finish"] == "tool_calls", reply
    assert reply["calls"], reply
    for called, arguments in reply["calls"]:
        jsonschema.validate(json.loads(arguments), SCHEMAS[called])


# Where the model, writing the fixed text token by token itself, cuts it as its
# tokenizer does, or differently only where that does not change its later picks, the
# reply is the same text. Elsewhere it can differ: without jump-forward SmolLM2 writes
# ``{"title": "`` as ``{`` ``"`` ``title`` ... (the grammar allows any cut), with it the
# context holds the tokenizer's ``{"`` ``title`` ..., and a later free choice can go
# another way (``email``: the third ``cc`` address; ``event``: the title's wording).
SAME_TEXT = ["person", "book_table", "weather", "search"]


@pytest.mark.parametrize("name", list(CASES))
def test_replies_are_valid_with_jump_forward_on_and_off(
    servers: dict[bool, InProcessServer], event_loop_runner: asyncio.Runner, name: str
) -> None:
    on = ask(servers[True], event_loop_runner, name, stream=False)
    off = ask(servers[False], event_loop_runner, name, stream=False)
    check_valid(name, on)
    check_valid(name, off)
    if name in SAME_TEXT:
        # The same text; the count of tokens can differ (the tokenizer's cut of the
        # written text is often shorter than the model's own).
        assert {**on, "completion_tokens": 0} == {**off, "completion_tokens": 0}


@pytest.mark.parametrize("name", ["person", "book_table", "email"])
def test_streamed_replies_reassemble_to_the_whole_ones(
    servers: dict[bool, InProcessServer], event_loop_runner: asyncio.Runner, name: str
) -> None:
    whole = ask(servers[True], event_loop_runner, name, stream=False)
    streamed = ask(servers[True], event_loop_runner, name, stream=True)
    check_valid(name, streamed)
    assert streamed == {k: v for k, v in whole.items() if k != "completion_tokens"}


def generate(engine: Any, runner: asyncio.Runner, gbnf: str) -> tuple[str, Finished]:
    async def run() -> tuple[str, Finished]:
        text = ""
        request = GenerationRequest(
            prompt="<|im_start|>user\nInvent a person.<|im_end|>\n<|im_start|>assistant\n",
            max_tokens=80,
            temperature=0.0,
            top_p=1.0,
            constraint=OutputConstraint(gbnf=gbnf),
        )
        async for event in engine.generate(request):
            if isinstance(event, Finished):
                return text, event
            text += getattr(event, "text", "")
        raise AssertionError("no Finished event")

    return runner.run(run())


def test_the_engine_counts_the_tokens_it_writes(
    engines: dict[bool, Any], event_loop_runner: asyncio.Runner
) -> None:
    gbnf = (
        'root ::= "{\\"name\\": \\"" [A-Za-z ]{1,20} "\\", \\"city\\": \\"" '
        '("Lisbon" | "London" | "Reykjavik") "\\", \\"seaside\\": true}"'
    )
    text_on, on = generate(engines[True], event_loop_runner, gbnf)
    text_off, off = generate(engines[False], event_loop_runner, gbnf)
    for text in (text_on, text_off):
        value = json.loads(text)
        assert value["seaside"] is True and value["city"] in ("Lisbon", "London", "Reykjavik")
    assert on.reason == off.reason == "stop"
    # The opening, the keys and the closing are written; the name is generated (and
    # then the city's rest once its start is unique).
    assert on.written_tokens >= 8
    assert off.written_tokens == 0
    assert on.written_tokens < on.completion_tokens


def test_forced_tokens_are_the_tokenizers_own_cut(engines: dict[bool, Any]) -> None:
    """What GuidedGrammar writes is what llama.cpp's tokenizer makes of the sampled
    token's text and the forced text together, never another cut of it."""
    engine = engines[True]
    guidance = engine._guidance
    assert guidance is not None
    grammar = guidance.grammar('root ::= "{\\"restaurant\\": \\"" [a-z]+ "\\"}"')
    assert grammar is not None
    tokenizer = guidance.tokenizer()
    fixed = b'{"restaurant": "'
    first = tokenizer.tokenize_bytes(fixed)[0]
    head = tokenizer.decode_bytes([first])
    assert grammar.accepts(first)
    grammar.accept(first)
    forced = grammar.forced_tokens(first, 100)
    text = head + tokenizer.decode_bytes(forced)
    assert len(forced) >= 2 and fixed.startswith(text)
    assert [first, *forced] == tokenizer.tokenize_bytes(text)
    # A first token the tokenizer would not cut there (``{`` where it makes ``{"``):
    # nothing is written, the model goes on by itself.
    other = guidance.grammar('root ::= "{\\"restaurant\\": \\"" [a-z]+ "\\"}"')
    assert other is not None
    brace = tokenizer.tokenize_bytes(b"{")[0]
    assert brace != first
    other.accept(brace)
    assert other.forced_tokens(brace, 100) == []


def test_a_grammar_llguidance_cannot_compile_falls_back_to_llama_cpp(
    engines: dict[bool, Any],
) -> None:
    guidance = engines[True]._guidance
    assert guidance.grammar("root ::= undefined-rule") is None


def test_jump_forward_is_a_setting() -> None:
    assert Settings().llama_cpp.jump_forward is True
    settings = Settings.from_values({"llama_cpp": {"jump_forward": False}})
    assert settings.llama_cpp.jump_forward is False


# The server's own grammar for the forced book_table call (hermes format), as prepare.py
# builds it.
def book_table_gbnf() -> str:
    from picolm_server.tool_calls import (
        FunctionTool,
        NamedTool,
        OutputRequest,
        build_grammar,
        make_plan,
    )

    function = BOOK_TABLE["function"]
    tool = FunctionTool(function["name"], None, function["parameters"], "tools", "tools")
    request = OutputRequest(tools=(tool,), tool_choice=NamedTool("book_table"))
    plan = make_plan(request, hermes_template=True, grammar_engine=True, max_tokens=120)
    assert plan is not None
    return build_grammar(plan).gbnf


def call_arguments(text: str) -> dict[str, Any]:
    assert text.startswith("<tool_call>\n") and text.endswith("\n</tool_call>"), text
    call = json.loads(text[len("<tool_call>\n") : -len("\n</tool_call>")])
    assert call["name"] == "book_table"
    arguments: dict[str, Any] = call["arguments"]
    jsonschema.validate(arguments, BOOK_TABLE["function"]["parameters"])
    return arguments


def test_jump_forward_on_gemma(gemma_model: Any) -> None:
    """Another tokenizer (Gemma 3's, SentencePiece-style): the written text is still the
    grammar's and the call valid."""
    from picolm_server.engines.llama_cpp.engine import LlamaCppEngine, LlamaCppOptions

    engine = LlamaCppEngine(
        LlamaCppOptions(model_path=gemma_model, model_id="gemma", context_length=1024, threads=2)
    )
    try:
        with asyncio.Runner() as runner:

            async def run() -> tuple[str, Finished]:
                text = ""
                request = GenerationRequest(
                    prompt="<start_of_turn>user\nBook a table for four at Luigi's at 19:30."
                    "<end_of_turn>\n<start_of_turn>model\n",
                    max_tokens=80,
                    temperature=0.0,
                    top_p=1.0,
                    constraint=OutputConstraint(gbnf=book_table_gbnf()),
                )
                async for event in engine.generate(request):
                    if isinstance(event, Finished):
                        return text, event
                    text += getattr(event, "text", "")
                raise AssertionError("no Finished event")

            text, finished = runner.run(run())
    finally:
        engine.close()
    call_arguments(text)
    assert finished.reason == "stop"
    assert 0 < finished.written_tokens < finished.completion_tokens


def test_written_chunks_beside_other_requests_change_nothing_when_deterministic() -> None:
    """With ``deterministic``, a reply never depends on the requests decoded beside it:
    a grammar reply whose written text goes in chunks of its own is the same alone and
    next to a plain reply and another grammar reply."""
    from picolm_server.engines.llama_cpp.engine import LlamaCppEngine, LlamaCppOptions
    from picolm_server.models.embedded import EMBEDDED_MODEL_ID
    from picolm_server.server.bootstrap import embedded_model_path

    engine = LlamaCppEngine(
        LlamaCppOptions(
            model_path=embedded_model_path(),
            model_id=EMBEDDED_MODEL_ID,
            context_length=1024,
            threads=2,
            slots=3,
            cache_max_bytes=0,
            deterministic=True,
        )
    )
    gbnf = book_table_gbnf()

    def prompt(question: str) -> str:
        return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"

    async def reply(question: str, grammar: str | None) -> tuple[str, int]:
        text = ""
        request = GenerationRequest(
            prompt=prompt(question),
            max_tokens=60,
            temperature=0.0,
            top_p=1.0,
            constraint=OutputConstraint(gbnf=grammar) if grammar else None,
        )
        async for event in engine.generate(request):
            if isinstance(event, Finished):
                return text, event.written_tokens
            text += getattr(event, "text", "")
        raise AssertionError("no Finished event")

    booking = "Book a table for four at Luigi's tonight at half past seven."

    async def together() -> list[tuple[str, int]]:
        return list(
            await asyncio.gather(
                reply("Tell me a story about the sea.", None),
                reply(booking, gbnf),
                reply("Book a table for two at Marco's at noon.", gbnf),
            )
        )

    try:
        with asyncio.Runner() as runner:
            alone = runner.run(reply(booking, gbnf))
            beside = runner.run(together())
    finally:
        engine.close()
    call_arguments(alone[0])
    call_arguments(beside[2][0])
    assert alone[1] > 0
    assert beside[1] == alone


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampled_replies_with_jump_forward_follow_the_grammar(
    engines: dict[bool, Any], event_loop_runner: asyncio.Runner, seed: int
) -> None:
    """Not greedy: the chain samples (and, when the grammar refuses its pick, samples
    again over llguidance's mask); the reply is still a valid call."""
    engine = engines[True]

    async def run() -> tuple[str, Finished]:
        text = ""
        request = GenerationRequest(
            prompt="<|im_start|>user\nBook a table for four at Luigi's at 19:30.<|im_end|>\n"
            "<|im_start|>assistant\n",
            max_tokens=120,
            temperature=1.0,
            top_p=0.95,
            seed=seed,
            constraint=OutputConstraint(gbnf=book_table_gbnf()),
        )
        async for event in engine.generate(request):
            if isinstance(event, Finished):
                return text, event
            text += getattr(event, "text", "")
        raise AssertionError("no Finished event")

    text, finished = event_loop_runner.run(run())
    if finished.reason == "stop":
        call_arguments(text)
    assert finished.written_tokens > 0
