"""Every decode of a llama.cpp generation engine runs on its loop's own thread, the
warm-up at load included: llama.cpp's OpenMP keeps a pool of worker threads for each
thread that has decoded, for as long as that thread lives, and with more such threads
than cores its workers sleep at every barrier (SmolLM2 then decodes at half speed;
docs/benchmarks.md, "One stream at full speed")."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.conftest import requires_llama
from tests.engines.llama_cpp.test_slots import make_engine, request, run

pytestmark = [pytest.mark.llama, requires_llama]


def test_the_warm_up_and_every_generation_decode_on_the_loops_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    import llama_cpp

    threads: list[str] = []
    decode = llama_cpp.llama_decode

    def watched(ctx: Any, batch: Any) -> int:
        threads.append(threading.current_thread().name)
        result: int = decode(ctx, batch)
        return result

    monkeypatch.setattr(llama_cpp, "llama_decode", watched)
    engine = make_engine(slots=1, reuse=True)
    try:
        asyncio.run(run(engine, request("Say hello.", 8)))
        assert engine.decode_loop.wait_until_idle(60)
    finally:
        engine.close()
    assert len(threads) >= 3  # the warm-up's two, then the request's
    assert set(threads) == {"llama-decode"}


def test_a_loop_with_nothing_to_do_ends_its_thread_and_the_next_request_starts_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resting loop holds no thread, so another model's loop (or the embedder) is the
    only one with OpenMP workers; a request after the rest is served as before."""
    import asyncio

    from picolm_server.engines.llama_cpp import slots

    monkeypatch.setattr(slots, "THREAD_REST_SECONDS", 0.2)
    engine = make_engine(slots=1, reuse=True)
    try:
        first = asyncio.run(run(engine, request("Say hello.", 8)))
        loop = engine.decode_loop
        resting = loop._thread
        resting.join(60)
        assert not resting.is_alive()
        second = asyncio.run(run(engine, request("Say hello.", 8)))
        assert loop._thread is not resting and loop._thread.is_alive()
        assert second.text == first.text
        assert second.cached_tokens > 0  # the slot's state outlived the thread
    finally:
        engine.close()
