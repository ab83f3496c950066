"""llama.cpp prompt states on disk: written when the engine closes, found again by the
next engine of the same model file, exact after the swap; damaged, truncated and foreign
files removed, never used; the disk budget; the folder's privacy.

The first tests drive the store alone with made-up state bytes; the last ones run the
real embedded model (SmolLM2-135M-Instruct) and compare greedy replies token for token.
Nothing is timed: the store's clock is injected where the save deadline is the point.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("numpy")

from picolm_server.config.settings import ConfigError, LlamaCppSection
from picolm_server.engines.llama_cpp.state_cache import Tokens, as_tokens
from picolm_server.engines.llama_cpp.state_store import SUFFIX, StateStore
from picolm_server.engines.saved_states import model_folder
from picolm_server.engines.state_dir import RUN_PREFIX, StateDirRefused
from tests.conftest import requires_llama
from tests.engines.llama_cpp.test_slots import SYSTEM, make_engine, request, run
from tests.engines.llama_cpp.test_slots import template as template  # the fixture

MODEL = "llama.cpp|/models/a.gguf|1000|1"
HEADER = 88


def make_store(
    base: Path,
    *,
    identity: str = MODEL,
    compatibility: str = "llama.cpp 1",
    max_bytes: int = 10**9,
    max_tokens: int = 1000,
    clock: Callable[[], float] | None = None,
) -> StateStore:
    extra: dict[str, Any] = {} if clock is None else {"clock": clock, "save_seconds": 5.0}
    return StateStore(
        base,
        model_identity=identity,
        compatibility=compatibility,
        max_bytes=max_bytes,
        max_tokens=max_tokens,
        **extra,
    )


def state(tokens: list[int], size: int = 100) -> tuple[Tokens, Callable[[], bytes]]:
    data = bytes([tokens[-1] % 256]) * size
    return as_tokens(tokens), lambda: data


def files(store: StateStore) -> list[Path]:
    return sorted(store.directory.glob(f"*{SUFFIX}"))


def restored(store: StateStore, prompt: list[int]) -> tuple[bytes | None, int]:
    entry, shared = store.best_match(as_tokens(prompt))
    return (None, 0) if entry is None else (store.read(entry), shared)


def test_states_written_by_one_store_are_found_by_the_next(tmp_path: Path) -> None:
    first = make_store(tmp_path)
    assert first.save([state([1, 2, 3, 4]), state([7, 8, 9])]) == 2
    second = make_store(tmp_path)
    assert len(second) == 2
    data, shared = restored(second, [1, 2, 3, 5, 6])
    assert data == bytes([4]) * 100 and shared == 3
    assert restored(second, [5, 5]) == (None, 0)


def test_the_folder_and_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = make_store(tmp_path / "states")
        store.save([state([1, 2, 3])])
    finally:
        os.umask(old)
    assert store.directory == tmp_path / "states" / model_folder(MODEL)
    for folder in (tmp_path / "states", store.directory):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    (path,) = files(store)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_unsafe_directory_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "shared"
    base.mkdir()
    base.chmod(0o777)
    with pytest.raises(StateDirRefused, match="writable by group or others"):
        make_store(base)
    section = LlamaCppSection(cache_dir=str(base))
    from picolm_server.server.bootstrap import llama_state_dir

    with pytest.raises(ConfigError, match=r"llama_cpp\.cache_dir"):
        llama_state_dir(section)
    assert llama_state_dir(LlamaCppSection(cache_dir=str(base), prompt_cache=False)) is None
    assert llama_state_dir(LlamaCppSection(cache_dir=str(tmp_path / "ok"))) == tmp_path / "ok"


def test_a_damaged_state_is_removed_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_store(tmp_path).save([state([1, 2, 3])])
    store = make_store(tmp_path)
    (path,) = files(store)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1  # one bit of the state
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        assert restored(store, [1, 2, 3, 4]) == (None, 3)
    assert "does not check out" in caplog.text
    assert files(store) == [] and len(store) == 0


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[:-1],  # truncated
        lambda raw: raw + b"\0",  # longer than it says
        lambda raw: raw[: HEADER - 1],  # not even a header
        lambda raw: b"X" + raw[1:],  # another magic
        lambda raw: raw[:8] + (2).to_bytes(4, "little") + raw[12:],  # another version
    ],
)
def test_a_file_that_does_not_check_out_is_removed_at_open(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    make_store(tmp_path).save([state([1, 2, 3]), state([4, 5, 6])])
    store = make_store(tmp_path)
    entry, _ = store.best_match(as_tokens([1, 2, 3]))
    assert entry is not None
    path = entry.path
    path.write_bytes(damage(path.read_bytes()))
    reopened = make_store(tmp_path)
    assert [t.tolist() for t in reopened.stored_tokens()] == [[4, 5, 6]]
    assert not path.exists()


def test_states_of_another_llama_cpp_or_model_are_removed(tmp_path: Path) -> None:
    make_store(tmp_path, compatibility="llama.cpp 1").save([state([1, 2, 3])])
    newer = make_store(tmp_path, compatibility="llama.cpp 2")
    assert len(newer) == 0 and files(newer) == []
    # Another model's file copied into this model's folder.
    other = make_store(tmp_path, identity="llama.cpp|/models/b.gguf|5|5")
    other.save([state([1, 2, 3])])
    (path,) = files(other)
    (newer.directory / path.name).write_bytes(path.read_bytes())
    assert len(make_store(tmp_path, compatibility="llama.cpp 2")) == 0
    assert not (newer.directory / path.name).exists()
    assert len(make_store(tmp_path, identity="llama.cpp|/models/b.gguf|5|5")) == 1


def test_a_file_under_another_tokens_name_is_removed(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.save([state([1, 2, 3])])
    (path,) = files(store)
    path.rename(path.with_name("0" * 32 + SUFFIX))
    assert len(make_store(tmp_path)) == 0 and files(store) == []


def test_states_longer_than_a_slot_holds_are_not_kept(tmp_path: Path) -> None:
    assert make_store(tmp_path, max_tokens=3).save([state([1, 2, 3, 4]), state([1])]) == 0
    make_store(tmp_path, max_tokens=10).save([state([1, 2, 3, 4])])
    assert len(make_store(tmp_path, max_tokens=3)) == 0  # a smaller context now


def test_the_disk_budget_keeps_the_most_recent(tmp_path: Path) -> None:
    size = HEADER + 3 * 4 + 100
    store = make_store(tmp_path, max_bytes=3 * size)
    # Most recent first: the last two do not fit.
    assert store.save([state([n, 0, n]) for n in range(1, 6)]) == 3
    assert store.total_bytes <= 3 * size
    assert sum(p.stat().st_size for p in files(store)) == store.total_bytes
    kept = {tuple(t.tolist()) for t in make_store(tmp_path, max_bytes=3 * size).stored_tokens()}
    assert kept == {(1, 0, 1), (2, 0, 2), (3, 0, 3)}
    # Newer states push out the least recently used; a read counts as a use.
    store = make_store(tmp_path, max_bytes=3 * size)
    assert restored(store, [3, 0, 3, 9])[0] is not None
    store.save([state([6, 0, 6])])
    kept = {tuple(t.tolist()) for t in make_store(tmp_path, max_bytes=3 * size).stored_tokens()}
    assert kept == {(6, 0, 6), (3, 0, 3), (1, 0, 1)}
    # A smaller budget at open drops the oldest at once.
    assert len(make_store(tmp_path, max_bytes=size)) == 1


def test_a_state_held_already_is_not_written_again(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert store.save([state([1, 2, 3, 4])]) == 1

    def never() -> bytes:
        raise AssertionError("a held state's bytes were asked for")

    assert store.save([(as_tokens([1, 2, 3, 4]), never), (as_tokens([1, 2, 3]), never)]) == 0
    # A longer state replaces the states it begins with.
    assert store.save([state([1, 2, 3, 4, 5])]) == 1
    assert [t.tolist() for t in make_store(tmp_path).stored_tokens()] == [[1, 2, 3, 4, 5]]


def test_saving_stops_at_its_deadline(tmp_path: Path) -> None:
    now = [0.0]

    def slow_state(tokens: list[int]) -> tuple[Tokens, Callable[[], bytes]]:
        def data() -> bytes:
            now[0] += 2.0  # each state takes two seconds to get
            return bytes(10)

        return as_tokens(tokens), data

    store = make_store(tmp_path, clock=lambda: now[0])
    assert store.save([slow_state([n, n]) for n in range(1, 10)]) == 3  # 0, 2, 4 < 5 s
    assert {tuple(t.tolist()) for t in store.stored_tokens()} == {(1, 1), (2, 2), (3, 3)}


def test_leftovers_of_dead_writers_are_removed(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    dead = store.directory / f"{RUN_PREFIX}999999999-x{SUFFIX}"
    live = store.directory / f"{RUN_PREFIX}{os.getpid()}-y{SUFFIX}"
    dead.write_bytes(b"half")
    live.write_bytes(b"being written")
    make_store(tmp_path)
    assert not dead.exists() and live.exists()


def test_a_symbolic_link_in_the_folder_is_not_followed(tmp_path: Path) -> None:
    store = make_store(tmp_path / "states")
    store.save([state([1, 2, 3])])
    (path,) = files(store)
    target = tmp_path / "elsewhere"
    path.rename(target)
    path.symlink_to(target)
    assert len(make_store(tmp_path / "states")) == 0
    assert not path.is_symlink() and target.exists()


# ---- the real model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh() -> Iterator[Any]:
    """No states at all: reuse off, one slot."""
    engine = make_engine(slots=1, reuse=False)
    yield engine
    engine.close()


def ask(engine: Any, prompt: str) -> tuple[str, int]:
    """A greedy reply and how many prompt tokens were not computed."""
    result = asyncio.run(run(engine, request(prompt, 24)))
    return result.text, result.cached_tokens


def conversations(template: Any, fresh: Any) -> list[tuple[str, str]]:
    """Two conversations' first and second prompts, the replies as a fresh engine gives."""
    pairs = []
    for question in ("Describe a lighthouse.", "What do cats eat?"):
        history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        first = str(template.render(history))
        reply, _ = ask(fresh, first)
        history += [
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "Tell me more."},
        ]
        pairs.append((first, str(template.render(history))))
    return pairs


@requires_llama
@pytest.mark.llama
def test_states_survive_close_and_replies_stay_exact(
    tmp_path: Path, template: Any, fresh: Any
) -> None:
    pairs = conversations(template, fresh)
    # No idle work on the replies: the states saved are exactly the first prompts'
    # (test_warm_replies.py saves replies' too).
    engine = make_engine(slots=2, reuse=True, state_dir=tmp_path, warm_replies=False)
    for first, _ in pairs:
        ask(engine, first)
    engine.close()
    store_files = list(tmp_path.glob(f"*/*{SUFFIX}"))
    assert len(store_files) == 2  # both slots' prompt states

    reopened = make_engine(slots=2, reuse=True, state_dir=tmp_path)
    try:
        for first, second in pairs:
            first_tokens = len(reopened.prompt_tokens(request(first, 1)))
            text, cached = ask(reopened, second)
            assert cached == first_tokens  # restored from disk, not recomputed
            assert text == ask(fresh, second)[0]
    finally:
        reopened.close()


@requires_llama
@pytest.mark.llama
def test_a_damaged_state_on_disk_is_recomputed_exactly(
    tmp_path: Path, template: Any, fresh: Any
) -> None:
    (first, second), _ = conversations(template, fresh)
    engine = make_engine(slots=2, reuse=True, state_dir=tmp_path)
    ask(engine, first)
    engine.close()
    (path,) = tmp_path.glob(f"*/*{SUFFIX}")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the KV cells
    path.write_bytes(bytes(raw))

    reopened = make_engine(slots=2, reuse=True, state_dir=tmp_path)
    try:
        text, cached = ask(reopened, second)
        assert cached == 0 and not path.exists()
        assert text == ask(fresh, second)[0]
    finally:
        reopened.close()


@requires_llama
@pytest.mark.llama
def test_a_restarted_server_restores_the_states_it_saved_at_stop(tmp_path: Path) -> None:
    import openai

    from tests.support.server import RunningServer, run_server

    def config(prompt_cache: bool) -> dict[str, Any]:
        section = {"prompt_cache": prompt_cache, "cache_dir": str(tmp_path / "states")}
        return {"llama_cpp": {**section, "parallel": 1, "context_length": 1024}}

    def chat(server: RunningServer, messages: list[dict[str, str]]) -> Any:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="none")
        return client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=messages,
            temperature=0,
            max_tokens=24,  # type: ignore[arg-type]
        )

    history = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Describe a lighthouse."},
    ]
    with run_server(config(True), tmp_path / "first") as server:
        first = chat(server, history)
    assert len(list((tmp_path / "states").glob(f"*/*{SUFFIX}"))) == 1  # written at stop
    history += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Tell me more."},
    ]
    with run_server(config(True), tmp_path / "second") as server:
        second = chat(server, history)
    with run_server(config(False), tmp_path / "fresh") as server:
        fresh_reply = chat(server, history)
    cached = second.usage.prompt_tokens_details.cached_tokens
    # The first turn's prompt, from disk, and of its reply what idle work computed
    # before the server stopped.
    assert first.usage.prompt_tokens <= cached < second.usage.prompt_tokens
    assert second.choices[0].message.content == fresh_reply.choices[0].message.content
