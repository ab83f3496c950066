"""The PicoLM engine against the stand-in executable (and, when PICOLM_BINARY names a
real build, against PicoLM itself): argv, stdin, trailers, N+1, counts, failures."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from picolm_server.engines.base import (
    Finished,
    GenerationEvent,
    GenerationRequest,
    PromptAccepted,
    TextDelta,
)
from picolm_server.engines.picolm.engine import PicoLMEngine, PicoLMOptions, TrailerFilter
from picolm_server.engines.picolm.prompt_store import PromptCache
from picolm_server.engines.picolm.tokenizer import PicoLMTokenizer
from picolm_server.errors import (
    ContextLengthExceededError,
    EmbeddingsUnsupportedError,
    EngineError,
    InvalidRequestError,
)
from picolm_server.gguf import read_gguf_metadata
from picolm_server.server.bootstrap import kv_shape
from tests.support.fake_picolm import LOG_ENV, read_history, reply_pieces
from tests.support.picolm_setup import PicoLMFiles, process_gone, wait_until_gone
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

REAL_BINARY = os.environ.get("PICOLM_BINARY")


def make_engine(binary: Path, model: Path, context_length: int = 2048) -> PicoLMEngine:
    metadata = read_gguf_metadata(model, arrays=frozenset({"tokenizer.ggml.tokens"}))
    options = PicoLMOptions(
        binary=binary, model_path=model, model_id="m", threads=1, context_length=context_length
    )
    return PicoLMEngine(options, metadata)


def run(
    engine: PicoLMEngine, prompt: str, max_tokens: int = 8, **kw: object
) -> list[GenerationEvent]:
    async def collect() -> list[GenerationEvent]:
        request = GenerationRequest(prompt, max_tokens, temperature=0.0, top_p=0.9, seed=1, **kw)  # type: ignore[arg-type]
        return [event async for event in engine.generate(request)]

    return asyncio.run(collect())


def text_of(events: list[GenerationEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


@pytest.fixture
def engine(picolm_files: PicoLMFiles) -> PicoLMEngine:
    return make_engine(picolm_files.binary, picolm_files.model)


# ---- TrailerFilter ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 100])
def test_trailer_filter_removes_eos_and_newline_in_any_split(size: int) -> None:
    data = " héllo wörld</s>\n".encode()
    trailer = TrailerFilter("</s>")
    out = "".join(trailer.feed(data[i : i + size]) for i in range(0, len(data), size))
    rest, by_eos = trailer.finish()
    assert out + rest == " héllo wörld" and by_eos
    assert "\ufffd" not in out


def test_trailer_filter_without_eos() -> None:
    trailer = TrailerFilter("</s>")
    assert trailer.feed(b"a\nb</") == "a\nb"
    assert trailer.feed(b"x\n") == "</x"
    assert trailer.finish() == ("", False)


def test_trailer_filter_keeps_a_newline_that_is_reply_text() -> None:
    trailer = TrailerFilter("</s>")
    out = trailer.feed(b"line\n\n")
    rest, by_eos = trailer.finish()
    assert out + rest == "line\n" and not by_eos


# ---- the command line ----------------------------------------------------------------------


def test_command_has_no_prompt_and_asks_for_n_minus_one(engine: PicoLMEngine) -> None:
    args = engine.command(GenerationRequest("SECRET PROMPT", 10, 0.5, 0.25, seed=3))
    assert "SECRET PROMPT" not in " ".join(args)
    assert "-p" not in args
    flags = dict(zip(args[2::2], args[3::2], strict=False))
    assert flags["-n"] == "9" and float(flags["-t"]) == 0.5 and float(flags["-k"]) == 0.25
    assert flags["-s"] == "3" and flags["-c"] == "512" and flags["-j"] == "1"
    assert engine.command(GenerationRequest("p", 1, 0.5, 0.5)).count("-n") == 1


def test_context_is_capped_by_the_model(picolm_files: PicoLMFiles) -> None:
    assert make_engine(picolm_files.binary, picolm_files.model, 4096).context_length == 512
    assert make_engine(picolm_files.binary, picolm_files.model, 100).context_length == 100


# ---- generation with the stand-in -------------------------------------------------------


def test_events_and_counts(engine: PicoLMEngine, picolm_files: PicoLMFiles) -> None:
    prompt = "Hello [[reply:one twö three]]"
    events = run(engine, prompt, max_tokens=8)
    assert isinstance(events[0], PromptAccepted)
    assert events[0].prompt_tokens == PicoLMTokenizer.from_gguf(picolm_files.model).count(prompt)
    assert isinstance(events[-1], Finished)
    # " one", " tw", two single bytes of "ö", " three"; the EOS is not counted.
    assert events[-1] == Finished("stop", len(reply_pieces("one twö three"))) == Finished("stop", 5)
    assert text_of(events) == " one twö three"


@pytest.mark.parametrize("max_tokens", [1, 2, 5])
def test_budget_is_exact(engine: PicoLMEngine, max_tokens: int) -> None:
    events = run(engine, "no directive here", max_tokens=max_tokens)
    assert events[-1] == Finished("length", max_tokens)
    assert len(text_of(events).split()) == max_tokens


def test_crash_and_signal_are_engine_errors(engine: PicoLMEngine) -> None:
    # How it ended, never what it wrote on stderr (that goes to the log).
    with pytest.raises(EngineError, match=r"^The PicoLM engine exited with status 3\.$"):
        run(engine, "[[crash]]")
    with pytest.raises(EngineError, match="SIGSEGV"):
        run(engine, "[[segv]]")


def test_prompt_over_the_context(picolm_files: PicoLMFiles) -> None:
    engine = make_engine(picolm_files.binary, picolm_files.model, 16)
    with pytest.raises(ContextLengthExceededError):
        run(engine, "a b c d e f g h i j k l m n o p q r s t")


def test_generation_stops_at_the_context(picolm_files: PicoLMFiles) -> None:
    engine = make_engine(picolm_files.binary, picolm_files.model, 16)
    events = run(engine, "a b c", max_tokens=100)
    assert isinstance(events[0], PromptAccepted) and isinstance(events[-1], Finished)
    assert events[-1].reason == "length"
    assert events[0].prompt_tokens + events[-1].completion_tokens <= 17


def test_unusable_model_is_an_engine_error(
    picolm_files: PicoLMFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(picolm_files.model.read_bytes())
    engine = make_engine(picolm_files.binary, model)
    model.write_bytes(b"not a model")
    with pytest.raises(EngineError, match="exited with status 1"):
        run(engine, "hi")
    assert "Failed to load model" in caplog.text


def test_closing_early_ends_the_process_and_its_children(
    engine: PicoLMEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv(LOG_ENV, str(log))

    async def scenario() -> None:
        events = engine.generate(GenerationRequest("[[child]] [[slow:0.05]]", 1000, 0.0, 0.9))
        async for event in events:
            if isinstance(event, TextDelta):
                break
        await events.aclose()

    asyncio.run(scenario())
    (run_,) = read_history(log)
    assert run_.child_pids
    wait_until_gone([run_.pid, *run_.child_pids], timeout=5)


@pytest.mark.parametrize("reuse", [False, True], ids=["no-reuse", "reuse"])
def test_the_process_is_gone_when_aclose_returns(
    picolm_files: PicoLMFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reuse: bool
) -> None:
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv(LOG_ENV, str(log))
    metadata = read_gguf_metadata(picolm_files.model, arrays=frozenset({"tokenizer.ggml.tokens"}))
    options = PicoLMOptions(picolm_files.binary, picolm_files.model, "m", 1, 512)
    tokenizer = PicoLMTokenizer.from_gguf(picolm_files.model)
    cache = None
    if reuse:
        shape = kv_shape(metadata)
        assert shape is not None
        cache = PromptCache(tmp_path / "c", max_bytes=1 << 30, model_identity="m", shape=shape)
    engine = PicoLMEngine(options, metadata, tokenizer=tokenizer, prompt_cache=cache)

    async def scenario() -> list[int]:
        events = engine.generate(GenerationRequest("hello [[slow:0.05]]", 1000, 0.0, 0.9))
        async for event in events:
            if isinstance(event, TextDelta):
                break
        await events.aclose()
        # Still inside the event loop: nothing was left for a finalizer to do later.
        return [run_.pid for run_ in read_history(log) if not process_gone(run_.pid)]

    assert asyncio.run(scenario()) == []


# ---- the real PicoLM (PICOLM_BINARY) ------------------------------------------------------

requires_real = pytest.mark.skipif(
    not REAL_BINARY, reason="set PICOLM_BINARY to a PicoLM build to run against it"
)


@requires_real
def test_real_picolm_budget_counts_and_trailers(tmp_path: Path) -> None:
    assert REAL_BINARY is not None
    model = build_tiny_llama_gguf(tmp_path / "tiny.gguf")
    engine = make_engine(Path(REAL_BINARY), model)
    prompt = "<|user|>\nHello world</s>\n<|assistant|>\n"
    for max_tokens in (1, 4):
        events = run(engine, prompt, max_tokens=max_tokens)
        assert isinstance(events[0], PromptAccepted)
        assert events[0].prompt_tokens == PicoLMTokenizer.from_gguf(model).count(prompt)
        assert events[-1] == Finished("length", max_tokens)
        assert "\n" not in text_of(events)[-1:]


@requires_real
def test_real_picolm_model_that_stops_at_once(tmp_path: Path) -> None:
    assert REAL_BINARY is not None
    model = build_tiny_llama_gguf(tmp_path / "stop.gguf", stop_at_once=True)
    events = run(make_engine(Path(REAL_BINARY), model), "Hello", max_tokens=5)
    assert text_of(events) == ""
    assert events[-1] == Finished("stop", 0)


@requires_real
def test_real_picolm_through_the_server(tmp_path: Path, picolm_files: PicoLMFiles) -> None:
    from tests.support.server import run_server

    assert REAL_BINARY is not None
    config = picolm_files.config(picolm={"binary": REAL_BINARY})
    with run_server(config, tmp_path) as server:
        client = server.client(max_retries=0)
        completion = client.chat.completions.create(
            model="tiny-picolm", messages=[{"role": "user", "content": "Hi"}], max_tokens=5
        )
        assert completion.usage is not None and completion.usage.completion_tokens == 5
        assert completion.choices[0].finish_reason == "length"
        content = completion.choices[0].message.content or ""
        assert "</s>" not in content and not content.endswith("\n")
        chunks = list(
            client.chat.completions.create(
                model="tiny-picolm",
                messages=[{"role": "user", "content": "Hi"}],
                max_tokens=5,
                stream=True,
                seed=1,
                temperature=0,
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        again = client.chat.completions.create(
            model="tiny-picolm",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5,
            seed=1,
            temperature=0,
        )
        assert streamed == again.choices[0].message.content


# ---- abilities, tokenizer and embeddings ----------------------------------------------------


def test_abilities_and_tokenizer(picolm_files: PicoLMFiles) -> None:
    bare = make_engine(picolm_files.binary, picolm_files.model)
    assert bare.abilities.schema_exact and not bare.abilities.grammar
    assert not bare.abilities.prompt_accepts_nul and not bare.abilities.top_k
    assert not bare.abilities.tokenize and not bare.abilities.embeddings
    assert bare.abilities.fim_tokens is None and bare.vocabulary_size() == 0
    with pytest.raises(InvalidRequestError):
        bare.tokenize("hi", add_special=True, parse_special=False)
    metadata = read_gguf_metadata(picolm_files.model, arrays=frozenset({"tokenizer.ggml.tokens"}))
    options = PicoLMOptions(picolm_files.binary, picolm_files.model, "m", 1, 512)
    tokenizer = PicoLMTokenizer.from_gguf(picolm_files.model)
    engine = PicoLMEngine(options, metadata, tokenizer=tokenizer)
    assert engine.abilities.tokenize and engine.vocabulary_size() == tokenizer.vocab_size
    ids = engine.tokenize("Hello world", add_special=True, parse_special=True)
    assert ids == tokenizer.encode("Hello world")
    assert engine.tokenize("Hello world", add_special=False, parse_special=False) == ids[1:]
    assert engine.detokenize(ids[1:]) == " Hello world"
    assert engine.token_piece(tokenizer.eos_id) == b"</s>"
    request = GenerationRequest("Hello world", 8, temperature=0.0, top_p=0.9)
    assert engine.count_prompt_tokens(request) == len(ids)
    with pytest.raises(InvalidRequestError) as caught:
        engine.detokenize([tokenizer.vocab_size])
    assert caught.value.param == "tokens"
    with pytest.raises(EmbeddingsUnsupportedError):
        asyncio.run(engine.embed(["hi"]))
