"""Calls from the decode thread reach the event loop in order, without handing the loop
the GIL before the calling thread gives it up (engines/loop_wakeup.py)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from picolm_server.engines.llama_cpp.loop_wakeup import LoopWakeup, LoopWakeups


@pytest.fixture
def long_switch_interval() -> Iterator[None]:
    """A thread waiting for the GIL asks for it only after this long: what runs first is
    then decided by who releases the GIL, not by the interpreter's timer."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(2.0)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def call_from_a_thread(
    wakeup: LoopWakeup, call: str, log: list[str], arrived: asyncio.Event
) -> threading.Thread:
    """A thread that hands ``call`` to the loop and then notes that it went on."""

    def on_the_loop(item: str) -> None:
        log.append(item)
        arrived.set()

    def work() -> None:
        wakeup.call(on_the_loop, call)
        log.append(f"after {call}")

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_calls_run_on_the_loop_in_order() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        wakeup = LoopWakeup(loop)
        assert wakeup.keeps_the_gil
        seen: list[str] = []
        done = asyncio.Event()
        on_loop: list[bool] = []

        def record(item: str) -> None:
            on_loop.append(threading.get_ident() == loop_thread)
            seen.append(item)
            if item == "c99":
                done.set()

        loop_thread = threading.get_ident()
        thread = threading.Thread(target=lambda: [wakeup.call(record, f"c{n}") for n in range(100)])
        thread.start()
        await asyncio.wait_for(done.wait(), 30)
        thread.join()
        wakeup.close()
        assert all(on_loop)
        return seen

    assert asyncio.run(main()) == [f"c{n}" for n in range(100)]


def test_the_loop_runs_a_call_only_once_the_caller_gives_up_the_gil(
    long_switch_interval: None,
) -> None:
    async def main() -> list[list[str]]:
        wakeup = LoopWakeup(asyncio.get_running_loop())
        logs: list[list[str]] = []
        for _ in range(20):
            log: list[str] = []
            arrived = asyncio.Event()
            thread = call_from_a_thread(wakeup, "first", log, arrived)
            # Polled, not awaited: a loop that wakes often (as a serving one does) is
            # ready to take the GIL the moment the calling thread lets it go.
            while not arrived.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            thread.join()
            logs.append(log)
        wakeup.close()
        return logs

    # Each time, the calling thread went on to its next statement before the loop ran
    # the call (call_soon_threadsafe lets the loop in first in a good share of them).
    assert asyncio.run(main()) == [["after first", "first"]] * 20


class LoopWithoutReaders(asyncio.SelectorEventLoop):
    def add_reader(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError


def test_a_loop_without_add_reader_gets_call_soon_threadsafe() -> None:
    loop = LoopWithoutReaders()
    try:
        wakeup = LoopWakeup(loop)
        assert not wakeup.keeps_the_gil
        log: list[str] = []

        async def main() -> None:
            arrived = asyncio.Event()
            thread = call_from_a_thread(wakeup, "x", log, arrived)
            await asyncio.wait_for(arrived.wait(), 30)
            thread.join()

        loop.run_until_complete(main())
        assert sorted(log) == ["after x", "x"]
        wakeup.close()  # nothing to close
    finally:
        loop.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_close_and_dropped_loops_give_the_pipe_back() -> None:
    before = open_fds()
    loop = asyncio.new_event_loop()
    wakeups = LoopWakeups()
    wakeup = wakeups.of(loop)
    assert wakeups.of(loop) is wakeup
    wakeups.close()
    wakeup.call(print, "dropped")  # after close: dropped, no error
    loop.close()
    assert open_fds() == before

    # A loop closed and dropped without close(): its pipe is closed with it.
    loop = asyncio.new_event_loop()
    LoopWakeups().of(loop)
    loop.close()
    del loop
    assert open_fds() == before


def test_calls_after_the_loop_closed_are_dropped() -> None:
    loop = asyncio.new_event_loop()
    wakeup = LoopWakeup(loop)
    loop.close()
    wakeup.call(print, "nobody listens")  # no error
    wakeup.close()
