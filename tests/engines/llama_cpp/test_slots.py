"""The llama.cpp decode loop with the real embedded model (SmolLM2-135M-Instruct): reuse
of computed prompt states never changes a reply, and with ``deterministic`` neither does
batching concurrent requests.

Each test compares replies token for token: greedy, and sampled with a fixed seed. The
engines here are small (a 1,024-token context per slot) and in this process; nothing is
timed.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import requires_llama

pytestmark = [pytest.mark.llama, requires_llama]

SYSTEM = "You are a helpful assistant. Answer briefly."
TOPICS = [
    "Tell me about the moon.",
    "What do cats eat?",
    "Name three rivers in Europe.",
    "How do plants grow?",
    "Why is the sky blue?",
    "What is a prime number?",
]
FOLLOW_UPS = ["Tell me more.", "Say it in one sentence.", "Give an example."]
# Not a measurement: how long a wait may last before a test calls the engine broken.
SAFETY_SECONDS = 300.0


def make_engine(
    slots: int,
    reuse: bool,
    cache_max_bytes: int = 64 * 2**20,
    deterministic: bool = False,
    state_dir: Path | None = None,
    warm_replies: bool = True,
) -> Any:
    from picolm_server.engines.llama_cpp.engine import LlamaCppEngine, LlamaCppOptions
    from picolm_server.models.embedded import EMBEDDED_MODEL_ID
    from picolm_server.server.bootstrap import embedded_model_path

    return LlamaCppEngine(
        LlamaCppOptions(
            model_path=embedded_model_path(),
            model_id=EMBEDDED_MODEL_ID,
            context_length=1024,
            threads=2,
            slots=slots,
            prompt_reuse=reuse,
            cache_max_bytes=cache_max_bytes,
            deterministic=deterministic,
            state_dir=state_dir,
            warm_replies=warm_replies,
        )
    )


@pytest.fixture(scope="module")
def template() -> Any:
    from picolm_server.gguf import read_gguf_metadata
    from picolm_server.prompting.chat_template import load_chat_template
    from picolm_server.server.bootstrap import embedded_model_path

    metadata = read_gguf_metadata(
        embedded_model_path(), arrays=frozenset({"tokenizer.ggml.tokens"})
    )
    return load_chat_template("auto", metadata, engine_adds_bos=True)


@pytest.fixture(scope="module")
def fresh() -> Iterator[Any]:
    """Reuse off, one slot: every prompt computed from scratch, alone."""
    engine = make_engine(slots=1, reuse=False)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def warm() -> Iterator[Any]:
    """Reuse on, two slots, a host cache: states kept, restored, batched. No idle work,
    so that what is kept is each prompt's state, whatever the timing (idle work on
    replies: test_warm_replies.py)."""
    engine = make_engine(slots=2, reuse=True, warm_replies=False)
    yield engine
    engine.close()


@dataclass
class Result:
    text: str
    tokens: int
    prompt_tokens: int
    cached_tokens: int
    reason: str


def request(
    prompt: str, max_tokens: int, *, temperature: float = 0.0, seed: int | None = None
) -> Any:
    from picolm_server.engines.base import GenerationRequest

    return GenerationRequest(
        prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_p=0.95, seed=seed
    )


async def run(engine: Any, req: Any, stop_after: int | None = None) -> Result:
    from picolm_server.engines.base import Finished, PromptAccepted, TextDelta

    text, tokens, prompt_tokens, cached, reason = "", 0, 0, 0, "cancelled"
    events = engine.generate(req)
    try:
        async for event in events:
            if isinstance(event, PromptAccepted):
                prompt_tokens, cached = event.prompt_tokens, event.cached_tokens
            elif isinstance(event, TextDelta):
                text += event.text
                tokens = event.completion_tokens
                if stop_after is not None and tokens >= stop_after:
                    break
            elif isinstance(event, Finished):
                reason = event.reason
                tokens = event.completion_tokens
    finally:
        await events.aclose()
    return Result(text, tokens, prompt_tokens, cached, reason)


def settled(engine: Any) -> None:
    """Wait until the engine's decode loop has nothing left to do, idle work included
    (the timeout only keeps a broken loop from hanging the suite)."""
    assert engine.decode_loop.wait_until_idle(timeout=SAFETY_SECONDS)


def conversation_prompt(template: Any, history: list[dict[str, str]]) -> str:
    return str(template.render([{"role": "system", "content": SYSTEM}, *history]))


def play(
    engine: Any,
    template: Any,
    conversations: int,
    turns: int,
    *,
    settle: bool = False,
    temperature: float = 0.0,
    seed: int | None = None,
) -> list[list[Result]]:
    """Conversations advanced round-robin, one request at a time, each reply appended to
    its history as the engine gave it; with ``settle``, each request waits until the
    engine's idle work is done (as a person reading and typing gives it time to)."""
    histories: list[list[dict[str, str]]] = [[] for _ in range(conversations)]
    results: list[list[Result]] = [[] for _ in range(conversations)]

    async def go() -> None:
        for turn in range(turns):
            for index in range(conversations):
                question = TOPICS[index] if turn == 0 else FOLLOW_UPS[(turn - 1) % 3]
                histories[index].append({"role": "user", "content": question})
                if settle:
                    settled(engine)
                prompt = conversation_prompt(template, histories[index])
                result = await run(engine, request(prompt, 16, temperature=temperature, seed=seed))
                histories[index].append({"role": "assistant", "content": result.text})
                results[index].append(result)

    asyncio.run(go())
    return results


def test_interleaved_conversations_reuse_state_and_keep_every_reply(
    fresh: Any, warm: Any, template: Any
) -> None:
    # Four conversations on two slots: every turn after the first comes back after
    # others have used the slots, so its state comes from the host cache.
    cold = play(fresh, template, conversations=4, turns=3)
    reused = play(warm, template, conversations=4, turns=3)
    assert [[r.text for r in c] for c in reused] == [[r.text for r in c] for c in cold]
    assert all(r.cached_tokens == 0 for c in cold for r in c)
    for conversation in reused:
        for before, result in itertools.pairwise(conversation):
            # The previous prompt was kept: only the reply and the new turn are read.
            assert result.cached_tokens == before.prompt_tokens
    assert warm.decode_loop.cache is not None and len(warm.decode_loop.cache) > 0


def test_cached_tokens_are_the_shared_prefix(warm: Any, template: Any) -> None:
    history = [{"role": "user", "content": "Describe a lighthouse."}]
    first_prompt = conversation_prompt(template, history)
    first = asyncio.run(run(warm, request(first_prompt, 20)))
    history += [
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "And a harbour?"},
    ]
    second_prompt = conversation_prompt(template, history)
    second = asyncio.run(run(warm, request(second_prompt, 8)))

    first_ids = warm.prompt_tokens(request(first_prompt, 1))
    second_ids = warm.prompt_tokens(request(second_prompt, 1))
    # By default the slot keeps the first prompt's state, not its reply's (computed one
    # row at a time, unlike a prompt): the second prompt starts after the first.
    assert second_ids[: len(first_ids)] == first_ids
    assert second.cached_tokens == len(first_ids)

    # The same prompt again: all of it is kept but its last token, whose logits start
    # the reply; and the reply is the same.
    again = asyncio.run(run(warm, request(second_prompt, 8)))
    assert again.cached_tokens == again.prompt_tokens - 1
    assert again.text == second.text


@pytest.fixture(scope="module")
def exact_alone() -> Iterator[Any]:
    """Deterministic, reuse off, one slot."""
    engine = make_engine(slots=1, reuse=False, deterministic=True)
    yield engine
    engine.close()


@pytest.mark.parametrize("temperature,seed", [(0.0, None), (0.9, 1234)])
def test_deterministic_batched_replies_equal_replies_alone(
    exact_alone: Any, template: Any, temperature: float, seed: int | None
) -> None:
    prompts = [
        conversation_prompt(template, [{"role": "user", "content": topic}]) for topic in TOPICS[:4]
    ]
    # Different lengths, so requests join and leave while others decode.
    budgets = [12 + 4 * i for i in range(len(prompts))]
    alone = [
        asyncio.run(run(exact_alone, request(p, n, temperature=temperature, seed=seed)))
        for p, n in zip(prompts, budgets, strict=True)
    ]
    engine = make_engine(slots=4, reuse=True, deterministic=True)
    try:

        async def together() -> list[Result]:
            return list(
                await asyncio.gather(
                    *(
                        run(engine, request(p, n, temperature=temperature, seed=seed))
                        for p, n in zip(prompts, budgets, strict=True)
                    )
                )
            )

        batched = asyncio.run(together())
        assert engine.decode_loop.steps < sum(r.tokens + 1 for r in batched)  # shared steps
    finally:
        engine.close()
    assert [r.text for r in batched] == [r.text for r in alone]
    assert all(r.text for r in alone)


def test_cancelling_one_batched_request_leaves_the_others_unchanged(
    exact_alone: Any, template: Any
) -> None:
    prompts = [
        conversation_prompt(template, [{"role": "user", "content": topic}]) for topic in TOPICS[:3]
    ]
    alone = [asyncio.run(run(exact_alone, request(p, 24))) for p in prompts]
    engine = make_engine(slots=3, reuse=True, deterministic=True)
    try:

        async def together() -> list[Result]:
            return list(
                await asyncio.gather(
                    run(engine, request(prompts[0], 24)),
                    run(engine, request(prompts[1], 24), stop_after=3),
                    run(engine, request(prompts[2], 24)),
                )
            )

        batched = asyncio.run(together())
        assert batched[1].reason == "cancelled" and batched[1].tokens == 3
        assert all(slot.job is None for slot in engine.decode_loop.slots)
    finally:
        engine.close()
    assert [batched[0].text, batched[2].text] == [alone[0].text, alone[2].text]


def test_deterministic_reuse_keeps_the_reply_too(exact_alone: Any, template: Any) -> None:
    """With every token computed two rows at a time, a reply's state is a prompt's: the
    next turn starts after it, and its replies are those of a fresh run."""
    engine = make_engine(slots=1, reuse=True, deterministic=True)
    try:
        cold = play(exact_alone, template, conversations=2, turns=2)
        warm = play(engine, template, conversations=2, turns=2)
    finally:
        engine.close()
    assert [[r.text for r in c] for c in warm] == [[r.text for r in c] for c in cold]
    for before, after in (conversation for conversation in warm):
        assert after.cached_tokens > before.prompt_tokens  # the reply was kept too


def test_host_memory_budget_is_honoured(template: Any) -> None:
    budget = 3 * 2**20  # a few short conversations' states at most
    engine = make_engine(slots=1, reuse=True, cache_max_bytes=budget)
    try:
        play(engine, template, conversations=5, turns=2)
        cache = engine.decode_loop.cache
        assert cache is not None
        assert 0 < cache.bytes <= budget
        assert 0 < len(cache) < 5
    finally:
        engine.close()


def test_an_idle_loop_keeps_its_reading_of_other_work_fresh() -> None:
    """Idle, the loop renews the CPU reading every quarter second, so a request that
    comes under load does not start from a reading that spans the whole idle time."""
    import threading

    from picolm_server.engines.llama_cpp.slots import DecodeLoop

    class CountingLoad:
        def __init__(self) -> None:
            self.readings = 0
            self.renewed = threading.Event()

        def free_cores(self) -> int:
            self.readings += 1
            if self.readings >= 3:
                self.renewed.set()
            return 2

    class IdleModel:  # nothing is decoded: no job is submitted
        def close(self) -> None:
            pass

    load = CountingLoad()
    loop = DecodeLoop(
        IdleModel(),  # type: ignore[arg-type]
        slots=1,
        context_length=64,
        reuse=False,
        cache=None,
        threads=2,
        cpu_load=load,  # type: ignore[arg-type]
    )
    try:
        assert load.renewed.wait(timeout=30), load.readings
    finally:
        loop.close()
