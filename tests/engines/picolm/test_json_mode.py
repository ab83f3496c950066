"""Schema-exact JSON on PicoLM: runs that continue from saved prompt states (on the
stand-in), and every reply of a random-weights model on the real PicoLM validating
(when PICOLM_BINARY names a build)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from picolm_server.engines.base import (
    GenerationEvent,
    GenerationRequest,
    OutputConstraint,
    PromptAccepted,
    TextDelta,
)
from picolm_server.engines.picolm.engine import PicoLMEngine, PicoLMOptions
from picolm_server.engines.picolm.prompt_store import PromptCache
from picolm_server.engines.picolm.tokenizer import PicoLMTokenizer
from picolm_server.gguf import read_gguf_metadata
from picolm_server.server.bootstrap import kv_shape
from tests.schema_json.test_writer import SCHEMAS, WEATHER
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf
from tests.tool_calls.test_tool_calls_http import NAMED_EMAIL, TOOLS, assert_valid_calls, reassemble

REAL_BINARY = os.environ.get("PICOLM_BINARY")
PROMPT = (
    "<|system|>\nYou are a weather robot on the hill by the sea. Answer with the call.</s>\n"
    "<|user|>\nWhat is the weather in the little house on the hill?</s>\n<|assistant|>\n"
)


def cached_engine(files: PicoLMFiles, workdir: Path) -> PicoLMEngine:
    metadata = read_gguf_metadata(files.model, arrays=frozenset({"tokenizer.ggml.tokens"}))
    shape = kv_shape(metadata)
    assert shape is not None
    cache = PromptCache(workdir, max_bytes=1 << 30, model_identity="tiny", shape=shape)
    options = PicoLMOptions(files.binary, files.model, "m", threads=1, context_length=512)
    return PicoLMEngine(
        options, metadata, tokenizer=PicoLMTokenizer.from_gguf(files.model), prompt_cache=cache
    )


def test_each_run_continues_from_the_saved_state_of_the_reply_so_far(
    picolm_files: PicoLMFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = cached_engine(picolm_files, tmp_path)
    runs: list[tuple[str, PromptAccepted]] = []
    plain = engine._generate_text

    async def recording(request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        async for event in plain(request):
            if isinstance(event, PromptAccepted):
                runs.append((request.prompt, event))
            yield event

    monkeypatch.setattr(engine, "_generate_text", recording)
    request = GenerationRequest(
        PROMPT, 120, 0.0, 1.0, seed=1, constraint=OutputConstraint(json_schema=WEATHER)
    )

    async def collect() -> list[GenerationEvent]:
        return [event async for event in engine.generate(request)]

    events = asyncio.run(collect())
    text = "".join(event.text for event in events if isinstance(event, TextDelta))
    jsonschema.validate(json.loads(text), WEATHER)
    assert engine.tokenizer is not None
    prompt_tokens = len(engine.tokenizer.encode(PROMPT))
    assert events[0] == PromptAccepted(prompt_tokens, 0)
    assert len(runs) > 1
    # Every run after the first starts from a saved state past the request's prompt:
    # it computes only reply tokens, never the conversation again.
    for _prompt, accepted in runs[1:]:
        assert accepted.cached_tokens >= prompt_tokens
        assert accepted.prompt_tokens - accepted.cached_tokens < 24


# ---- the real PicoLM on a random-weights model --------------------------------------------

real_only = pytest.mark.skipif(not REAL_BINARY, reason="set PICOLM_BINARY to a PicoLM build")


@pytest.fixture(scope="module", params=[True, False], ids=["reuse", "no-reuse"])
def real_server(
    request: pytest.FixtureRequest,
    picolm_files: PicoLMFiles,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PicoLMServer]:
    assert REAL_BINARY is not None
    root = tmp_path_factory.mktemp("real-picolm-json")
    model = build_tiny_llama_gguf(root / "tiny-4k.gguf", context_length=4096)
    files = PicoLMFiles(Path(REAL_BINARY), model, picolm_files.stop_model, root)
    picolm = {
        "context_length": 4096,
        "max_tokens": 96,
        "prompt_cache": request.param,
        "cache_dir": str(root / "cache"),
    }
    with files.serve(root, picolm=picolm) as server:
        yield server


@real_only
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_real_picolm_json_schema_replies_always_validate(
    real_server: PicoLMServer, name: str
) -> None:
    client = real_server.client(max_retries=0)
    schema = SCHEMAS[name]
    for seed, temperature in [(1, 0.0), (2, 1.0), (3, 1.5)]:
        completion = client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": f"Describe it as JSON ({name})."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": name, "strict": True, "schema": schema},
            },
            temperature=temperature,
            seed=seed,
        )
        content = completion.choices[0].message.content
        assert content is not None
        jsonschema.validate(json.loads(content), schema)
        assert completion.choices[0].finish_reason == "stop"


@real_only
@pytest.mark.parametrize(
    ("choice", "allowed"),
    [("required", {"get_weather", "send_email"}), (NAMED_EMAIL, {"send_email"})],
)
def test_real_picolm_forced_calls_always_validate(
    real_server: PicoLMServer, choice: Any, allowed: set[str]
) -> None:
    client = real_server.client(max_retries=0)
    for seed, temperature in [(1, 0.0), (2, 1.0), (5, 1.5)]:
        params: dict[str, Any] = {
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": "Weather in Paris, then mail Ann."}],
            "tools": TOOLS,
            "tool_choice": choice,
            "temperature": temperature,
            "seed": seed,
        }
        whole = client.chat.completions.create(**params).choices[0]
        calls = assert_valid_calls(whole.message, allowed)
        assert len(calls) == 1
        assert whole.finish_reason == "tool_calls"
        content, streamed, finish = reassemble(
            client.chat.completions.create(**params, stream=True)
        )
        assert finish == "tool_calls" and content is None
        assert [(c["name"], c["arguments"]) for c in streamed] == [
            (call.function.name, call.function.arguments) for call in calls
        ]
