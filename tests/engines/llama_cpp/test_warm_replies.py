"""Idle work of the llama.cpp decode loop (``llama_cpp.warm_replies``), with the real
embedded model (SmolLM2-135M-Instruct): while no request runs or waits, an ended reply
is computed again as prompt, so that the next turn starts after it.

What is checked: the state idle work leaves is bit for bit the one computing the same
tokens as a prompt leaves; replies do not depend on it (token for token against a fresh
engine, greedy and seeded); ``cached_tokens`` covers the reply once the work is done; a
request that comes meanwhile takes the state as it stands, and the rest of that slot's
work is dropped; a failed idle decode leaves no cells behind; idle work never shares the
loop with a running or waiting request. Nothing is timed: a test waits until the loop
is idle (``DecodeLoop.wait_until_idle``), or holds an idle decode until it has placed a
request, through a wrapper of the loop's llama.cpp calls.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import requires_llama
from tests.engines.llama_cpp.test_slots import (
    SAFETY_SECONDS,
    Result,
    conversation_prompt,
    make_engine,
    play,
    request,
    run,
    settled,
)
from tests.engines.llama_cpp.test_slots import template as template  # the fixture

pytestmark = [pytest.mark.llama, requires_llama]

QUESTION = "Describe a lighthouse."
FOLLOW_UP = "Tell me more."
# Long enough that its reply takes several idle chunks.
REPLY_TOKENS = 48


@pytest.fixture(scope="module")
def fresh() -> Iterator[Any]:
    """Reuse off, one slot: every prompt computed from scratch, alone."""
    engine = make_engine(slots=1, reuse=False)
    yield engine
    engine.close()


class Watched:
    """The decode loop's llama.cpp calls (``ModelContext``), watched. An idle decode (no
    request's row in it) is counted, and counted again if a request was running or
    waiting then; the next one can be held until the test lets it go (``hold``), or
    fail: return an error code after decoding (``"code"``) or raise (``"raise"``)."""

    def __init__(self, model: Any, loop: Any) -> None:
        self._model = model
        self._loop = loop
        self.idle_decodes = 0
        self.idle_decodes_beside_requests = 0
        self.hold: threading.Event | None = None
        self.holding = threading.Event()
        self.fault: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def decode(self, rows: list[Any]) -> int:
        if any(row.slot.job is not None for row in rows):
            result: int = self._model.decode(rows)
            return result
        self.idle_decodes += 1
        loop = self._loop
        if loop._waiting or any(slot.job is not None for slot in loop.slots):
            self.idle_decodes_beside_requests += 1
        if self.hold is not None:
            release, self.hold = self.hold, None
            self.holding.set()
            assert release.wait(SAFETY_SECONDS)
        result = self._model.decode(rows)
        fault, self.fault = self.fault, None
        if fault == "raise":
            raise RuntimeError("an injected fault")
        return 1 if fault == "code" else result


def watched_engine(slots: int = 1, **options: Any) -> tuple[Any, Watched]:
    engine = make_engine(slots=slots, reuse=True, **options)
    loop = engine.decode_loop
    watched = Watched(loop.model, loop)
    loop.model = watched
    return engine, watched


def close(engine: Any, watched: Watched) -> None:
    engine.decode_loop.model = watched._model
    engine.close()


def prompt_ids(engine: Any, prompt: str) -> list[int]:
    return list(engine.prompt_tokens(request(prompt, 1)))


def slot_state(engine: Any, seq: int = 0) -> tuple[list[int], int]:
    """A settled slot's tokens, and the last position its cells hold (-1: none)."""
    import llama_cpp

    memory = engine.decode_loop.model.memory
    tokens = [int(t) for t in engine.decode_loop.slots[seq].tokens]
    return tokens, int(llama_cpp.llama_memory_seq_pos_max(memory, seq))


def turns(template: Any, first_reply: str) -> tuple[str, str]:
    history = [{"role": "user", "content": QUESTION}]
    first = conversation_prompt(template, history)
    history += [
        {"role": "assistant", "content": first_reply},
        {"role": "user", "content": FOLLOW_UP},
    ]
    return first, conversation_prompt(template, history)


def ask(engine: Any, prompt: str, max_tokens: int = REPLY_TOKENS) -> Result:
    return asyncio.run(run(engine, request(prompt, max_tokens)))


def submit(engine: Any, prompt: str, max_tokens: int) -> queue.Queue[object]:
    """Hand the loop a job from this thread, at once (no event loop in between)."""
    from picolm_server.engines.llama_cpp.slots import Job
    from picolm_server.engines.llama_cpp.state_cache import as_tokens

    events: queue.Queue[object] = queue.Queue()
    req = request(prompt, max_tokens)
    job = Job(
        prompt=as_tokens(prompt_ids(engine, prompt)),
        budget=max_tokens,
        sampler=engine._sampler(req),
        deliver=events.put,
    )
    engine.decode_loop.submit(job)
    return events


def collect(events: queue.Queue[object]) -> Result:
    from picolm_server.engines.base import Finished, PromptAccepted, TextDelta
    from picolm_server.engines.llama_cpp.slots import JOB_RELEASED

    result = Result("", 0, 0, 0, "cancelled")
    while (event := events.get(timeout=SAFETY_SECONDS)) is not JOB_RELEASED:
        if isinstance(event, PromptAccepted):
            result.prompt_tokens, result.cached_tokens = event.prompt_tokens, event.cached_tokens
        elif isinstance(event, TextDelta):
            result.text += event.text
        elif isinstance(event, Finished):
            result.reason, result.tokens = event.reason, event.completion_tokens
        else:
            raise AssertionError(event)
    return result


def reply_length(result: Result) -> int:
    """The reply's tokens as the slot computes them: its end token too, when it has one."""
    return result.tokens + (result.reason == "stop")


# 33: a reply cut by its budget, its last chunk one token (given a filler row); 80: a
# reply ended by <|im_end|>, which the slot holds too (ChatML writes it after a reply).
@pytest.mark.parametrize("max_tokens,ending", [(2 * 16 + 1, "length"), (80, "stop")])
def test_idle_work_leaves_the_state_a_prompt_computes(
    fresh: Any, template: Any, max_tokens: int, ending: str
) -> None:
    """Bit for bit: the KV cells of a prompt extended by idle work, and of the same
    tokens computed as one prompt; and the next turn starts after the reply."""
    from picolm_server.engines.base import GenerationRequest
    from picolm_server.engines.llama_cpp.slots import WARM_CHUNK

    warm, watched = watched_engine()
    cold = make_engine(slots=1, reuse=True, warm_replies=False)
    try:
        first, _ = turns(template, "")
        result = ask(warm, first, max_tokens)
        assert result.reason == ending
        settled(warm)
        tokens, last_cell = slot_state(warm)
        first_ids = prompt_ids(warm, first)
        assert len(tokens) == len(first_ids) + reply_length(result)
        assert tokens[: len(first_ids)] == first_ids
        assert watched.is_end(tokens[-1]) == (ending == "stop")
        assert last_cell == len(tokens) - 1  # no filler cell left

        # The same tokens as a prompt: a budget of one leaves them all in the slot.
        as_prompt = GenerationRequest(
            prompt="", max_tokens=1, temperature=0.0, top_p=1.0, prompt_tokens=tuple(tokens)
        )
        asyncio.run(run(cold, as_prompt))
        settled(cold)
        assert slot_state(cold) == (tokens, last_cell)
        assert watched.save(0) == cold.decode_loop.model.save(0)
        assert watched.idle_decodes == -(-reply_length(result) // WARM_CHUNK)
        if ending == "length":
            assert reply_length(result) % WARM_CHUNK == 1  # a lone token at the end

        _, second = turns(template, result.text)
        after = ask(warm, second, 16)
        assert after.cached_tokens == len(tokens)  # the reply and its end token, if any
        assert after.text == ask(fresh, second, 16).text
    finally:
        close(warm, watched)
        cold.close()


@pytest.mark.parametrize("temperature,seed", [(0.0, None), (0.9, 1234)])
def test_turns_after_idle_work_reply_as_without_it(
    fresh: Any, template: Any, temperature: float, seed: int | None
) -> None:
    """Two conversations on one slot (so their states also go through host memory),
    three turns each, every turn after the loop settled."""
    warm = make_engine(slots=1, reuse=True)
    cold = make_engine(slots=1, reuse=True, warm_replies=False)
    try:
        sampling = {"temperature": temperature, "seed": seed}
        with_work = play(warm, template, 2, 3, settle=True, **sampling)
        without = play(cold, template, 2, 3, settle=True, **sampling)
        alone = play(fresh, template, 2, 3, **sampling)
    finally:
        warm.close()
        cold.close()
    texts = [[r.text for r in conversation] for conversation in alone]
    assert [[r.text for r in c] for c in with_work] == texts
    assert [[r.text for r in c] for c in without] == texts
    for warm_turns, cold_turns in zip(with_work, without, strict=True):
        for turn in (1, 2):
            before = warm_turns[turn - 1]
            # Without idle work the previous prompt is kept; with it, its reply too.
            assert cold_turns[turn].cached_tokens == before.prompt_tokens
            assert warm_turns[turn].cached_tokens >= before.prompt_tokens + before.tokens


def test_a_turn_that_comes_during_idle_work_starts_where_it_stands(
    fresh: Any, template: Any
) -> None:
    from picolm_server.engines.llama_cpp.slots import WARM_CHUNK

    engine, watched = watched_engine()
    try:
        release = threading.Event()
        watched.hold = release
        first, _ = turns(template, "")
        reply = ask(engine, first)
        assert reply.tokens > WARM_CHUNK
        _, second = turns(template, reply.text)
        assert watched.holding.wait(SAFETY_SECONDS)  # the first chunk is being computed
        events = submit(engine, second, 16)
        release.set()
        result = collect(events)
        # The prompt and the one chunk computed before the request was placed.
        assert result.cached_tokens == len(prompt_ids(engine, first)) + WARM_CHUNK
        assert result.text == ask(fresh, second, 16).text
        settled(engine)
        assert watched.idle_decodes_beside_requests == 0
        tokens, last_cell = slot_state(engine)
        assert tokens[: result.prompt_tokens] == prompt_ids(engine, second)
        assert last_cell == len(tokens) - 1
    finally:
        close(engine, watched)


def test_idle_work_of_a_slot_goes_on_after_a_request_in_another(fresh: Any, template: Any) -> None:
    engine, watched = watched_engine(slots=2)
    try:
        release = threading.Event()
        watched.hold = release
        first, _ = turns(template, "")
        reply = ask(engine, first)
        _, second = turns(template, reply.text)
        assert watched.holding.wait(SAFETY_SECONDS)
        # No token in common with the conversation's: it takes the other slot.
        other = collect_during(engine, release, "Once upon a time, in a small village,")
        assert other.cached_tokens == 0 and other.text
        settled(engine)
        tokens, _ = slot_state(engine, 0)
        assert len(tokens) == len(prompt_ids(engine, first)) + reply_length(reply)
        result = ask(engine, second, 16)
        assert result.cached_tokens >= len(prompt_ids(engine, first)) + reply.tokens
        assert result.text == ask(fresh, second, 16).text
        assert watched.idle_decodes_beside_requests == 0
    finally:
        close(engine, watched)


def collect_during(engine: Any, release: threading.Event, prompt: str) -> Result:
    """A request submitted while an idle decode is held, then let go."""
    events = submit(engine, prompt, 8)
    release.set()
    return collect(events)


@pytest.mark.parametrize("fault", ["code", "raise"])
def test_a_failed_idle_decode_drops_the_work_and_its_cells(
    fresh: Any, template: Any, fault: str
) -> None:
    engine, watched = watched_engine()
    try:
        watched.fault = fault
        first, _ = turns(template, "")
        reply = ask(engine, first)
        settled(engine)
        assert watched.idle_decodes == 1  # the rest of the work was dropped
        first_ids = prompt_ids(engine, first)
        assert slot_state(engine) == (first_ids, len(first_ids) - 1)
        _, second = turns(template, reply.text)
        result = ask(engine, second, 16)
        assert result.cached_tokens == len(first_ids)
        assert result.text == ask(fresh, second, 16).text
    finally:
        close(engine, watched)


def test_concurrent_requests_never_share_the_loop_with_idle_work(fresh: Any, template: Any) -> None:
    """Three conversations on three slots, two turns sent together each time (the second
    as soon as the first is in, while idle work is pending), then a third turn alone
    after the loop settled, which starts after the second turn's reply and replies as a
    fresh engine does."""
    engine, watched = watched_engine(slots=3)
    topics = ["Tell me about the moon.", "What do cats eat?", "How do plants grow?"]
    histories = [[{"role": "user", "content": topic}] for topic in topics]
    try:

        async def together() -> list[Result]:
            prompts = [conversation_prompt(template, history) for history in histories]
            return list(await asyncio.gather(*(run(engine, request(p, 24)) for p in prompts)))

        for question in (None, "Say it in one sentence."):
            if question is not None:
                for history in histories:
                    history.append({"role": "user", "content": question})
            replies = asyncio.run(together())
            for history, reply in zip(histories, replies, strict=True):
                assert reply.text
                history.append({"role": "assistant", "content": reply.text})
        settled(engine)
        assert watched.idle_decodes > 0
        for history, before in zip(histories, replies, strict=True):
            history.append({"role": "user", "content": "Give an example."})
            prompt = conversation_prompt(template, history)
            result = ask(engine, prompt, 16)
            assert result.cached_tokens >= before.prompt_tokens + before.tokens
            assert result.text == ask(fresh, prompt, 16).text
            settled(engine)
        assert watched.idle_decodes_beside_requests == 0
    finally:
        close(engine, watched)


def test_states_saved_at_close_hold_the_recomputed_reply(
    tmp_path: Path, fresh: Any, template: Any
) -> None:
    engine = make_engine(slots=1, reuse=True, state_dir=tmp_path)
    first, _ = turns(template, "")
    reply = ask(engine, first)
    settled(engine)
    engine.close()

    _, second = turns(template, reply.text)
    reopened = make_engine(slots=1, reuse=True, state_dir=tmp_path)
    try:
        result = ask(reopened, second, 16)
        assert result.cached_tokens >= len(prompt_ids(reopened, first)) + reply.tokens
        assert result.text == ask(fresh, second, 16).text
    finally:
        reopened.close()


@pytest.mark.parametrize(
    "section,warm",
    [({}, True), ({"warm_replies": False}, False), ({"prompt_cache": False}, False)],
)
def test_the_setting_reaches_the_decode_loop(
    tmp_path: Path, section: dict[str, Any], warm: bool
) -> None:
    """``llama_cpp.warm_replies`` (on by default, and only with ``prompt_cache``)."""
    from picolm_server.config.settings import Settings
    from picolm_server.engines.llama_cpp.engine import LlamaCppEngine
    from picolm_server.server.bootstrap import build_core

    options = {"threads": 2, "parallel": 1, "cache_dir": str(tmp_path), **section}
    core = build_core(Settings.from_values({"engine": "llama_cpp", "llama_cpp": options}))
    try:
        engine = core.models.loaded_engine(core.accept("").model_id)
        assert isinstance(engine, LlamaCppEngine)
        assert engine.decode_loop.warm_replies is warm
    finally:
        asyncio.run(core.models.aclose())


class SharedCores:
    """The loop's reading of other work, told by the test: ``free`` cores, and an event
    once the loop has read it ``reads`` more times."""

    cores = 2
    since = 0.0

    def __init__(self) -> None:
        self.free = 2
        self.read = threading.Event()
        self._lock = threading.Lock()
        self._left = 0

    def expect(self, reads: int) -> None:
        with self._lock:
            self.read.clear()
            self._left = reads

    def free_cores(self, window: float = 0.25) -> int:
        with self._lock:
            self._left -= 1
            if self._left <= 0:
                self.read.set()
            return self.free

    def free_now(self) -> int | None:
        return self.free


def test_idle_work_waits_while_other_processes_use_the_cores(template: Any) -> None:
    """Idle work is a bet on the next turn: it must not take the cores from another
    process (a server beside this one starting its own reply). It waits, reading the
    load again and again, and goes on once the cores are free."""
    engine, watched = watched_engine()
    try:
        choice = engine.decode_loop._thread_choice
        assert choice is not None
        load = SharedCores()
        choice.load = load
        load.free = 1  # another process holds a core
        first, _ = turns(template, "")
        reply = ask(engine, first)
        assert reply.tokens > 0
        load.expect(8)
        assert load.read.wait(SAFETY_SECONDS)  # the loop has looked, several times
        assert watched.idle_decodes == 0
        load.free = 2
        assert engine.decode_loop.wait_until_idle(SAFETY_SECONDS)
        assert watched.idle_decodes > 0
        tokens, _ = slot_state(engine)
        assert len(tokens) == len(prompt_ids(engine, first)) + reply_length(reply)
    finally:
        close(engine, watched)


def test_idle_work_waits_for_a_pause_in_the_requests(
    template: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program sends its next request at once: idle work starts only after a pause
    (WARM_AFTER_SECONDS, here longer than the test), so it never holds such a request."""
    from picolm_server.engines.llama_cpp import slots

    monkeypatch.setattr(slots, "WARM_AFTER_SECONDS", 3600.0)
    engine, watched = watched_engine()
    try:
        first, _ = turns(template, "")
        reply = ask(engine, first)
        _, second = turns(template, reply.text)
        result = ask(engine, second, 8)
        assert watched.idle_decodes == 0
        assert result.cached_tokens == len(prompt_ids(engine, first))  # the reply not warmed
    finally:
        close(engine, watched)
