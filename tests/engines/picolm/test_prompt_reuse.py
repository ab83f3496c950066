"""Prompt-state reuse on PicoLM, over HTTP through the openai SDK, on the stand-in (which
honours --cache as PicoLM does, off-by-one included, and whose reply depends on the state
it computed): replies with reuse are the replies without it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from picolm_server.engines.picolm.kv_file import KV_MAGIC
from tests.support.fake_picolm import default_pieces
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

SYSTEM = (
    "You are a helpful robot that answers questions about the sea, the trees and the "
    "morning light on the hill. Keep every answer short and friendly."
)
QUESTIONS = [
    "hello robot, how is the world today?",
    "what is deep in the sea?",
    "and what about the little house on the hill?",
    "is the wind strong in the trees?",
    "tell me about the morning light",
    "and the robot said what to the world?",
    "thank you, good night",
]
Chat = list[dict[str, str]]


def ask(server: PicoLMServer, messages: Chat, **kw: Any) -> tuple[str, Any]:
    response = server.client().chat.completions.create(
        model=MODEL_ID, messages=messages, temperature=0, max_tokens=6, **kw
    )
    return response.choices[0].message.content or "", response.usage


def conversation(server: PicoLMServer, questions: list[str], system: str = SYSTEM) -> list[Any]:
    messages: Chat = [{"role": "system", "content": system}]
    results = []
    for question in questions:
        messages.append({"role": "user", "content": question})
        reply, usage = ask(server, messages)
        results.append((reply, usage))
        messages.append({"role": "assistant", "content": reply})
    return results


def cache_files(workdir: Path) -> list[Path]:
    return [p for p in (workdir / "cache").rglob("*") if p.is_file()]


def kv_bytes(workdir: Path) -> int:
    return sum(p.stat().st_size for p in cache_files(workdir) if p.suffix == ".kv")


@pytest.fixture(scope="module")
def off_server(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    workdir = tmp_path_factory.mktemp("reuse-off")
    with picolm_files.serve(workdir, picolm={"prompt_cache": False}) as server:
        yield server


def serve_on(files: PicoLMFiles, workdir: Path, **picolm: Any) -> Any:
    return files.serve(
        workdir,
        server={"max_concurrent": 2},
        picolm={"prompt_cache": True, "cache_dir": str(workdir / "cache"), **picolm},
    )


@pytest.fixture(scope="module")
def on_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reuse-on")


@pytest.fixture(scope="module")
def on_server(picolm_files: PicoLMFiles, on_workdir: Path) -> Iterator[PicoLMServer]:
    with serve_on(picolm_files, on_workdir) as server:
        yield server


def test_stand_in_reply_depends_on_the_state_it_computed(tmp_path: Path) -> None:
    """The stand-in reproduces the off-by-one: the true prompt with a cache gives
    another reply than without one (so an uncorrected server fails the tests below)."""
    files = PicoLMFiles.create(tmp_path)
    first, second = b"the robot said hello", b"the robot said hello to the world"
    cache = tmp_path / "c.kv"

    def run(prompt: bytes, *extra: str) -> bytes:
        argv = [str(files.binary), str(files.model), "-n", "5", "-t", "0", *extra]
        return subprocess.run(argv, input=prompt, capture_output=True, check=True).stdout

    run(first, "--cache", str(cache))
    data = cache.read_bytes()
    assert int.from_bytes(data[:4], "little") == KV_MAGIC
    assert run(second, "--cache", str(cache)) != run(second)


def test_multi_turn_replies_are_identical_and_cached_tokens_reported(
    on_server: PicoLMServer, off_server: PicoLMServer
) -> None:
    with_reuse = conversation(on_server, QUESTIONS)
    without = conversation(off_server, QUESTIONS)
    assert [r for r, _ in with_reuse] == [r for r, _ in without]
    assert len(set(r for r, _ in without)) > 1
    cached = [u.prompt_tokens_details.cached_tokens for _, u in with_reuse]
    prompts = [u.prompt_tokens for _, u in with_reuse]
    assert cached[0] == 0
    for turn in range(1, len(QUESTIONS)):
        # Everything up to the previous prompt was reused.
        assert prompts[turn - 1] - 8 <= cached[turn] < prompts[turn]
    assert all(u.prompt_tokens_details.cached_tokens == 0 for _, u in without)
    runs = off_server.history()
    assert runs and all("--cache" not in run.argv for run in runs)
    assert all("--cache" in run.argv for run in on_server.history())


def test_edited_earlier_messages_give_the_replies_of_a_fresh_run(
    on_server: PicoLMServer, off_server: PicoLMServer
) -> None:
    conversation(on_server, QUESTIONS[:4])
    edited = [*QUESTIONS[:1], "what is deep in the sea, robot?", *QUESTIONS[2:4]]
    with_reuse = conversation(on_server, edited)
    assert [r for r, _ in with_reuse] == [r for r, _ in conversation(off_server, edited)]
    assert with_reuse[1][1].prompt_tokens_details.cached_tokens > 0


def test_concurrent_conversations(on_server: PicoLMServer, off_server: PicoLMServer) -> None:
    async def talk(server: PicoLMServer, topic: str) -> list[str]:
        client = server.async_client()
        messages: Chat = [{"role": "system", "content": SYSTEM}]
        replies = []
        for question in QUESTIONS[:5]:
            messages.append({"role": "user", "content": f"{topic}: {question}"})
            response = await client.chat.completions.create(
                model=MODEL_ID, messages=messages, temperature=0, max_tokens=6
            )
            replies.append(response.choices[0].message.content or "")
            messages.append({"role": "assistant", "content": replies[-1]})
        return replies

    async def both(server: PicoLMServer) -> list[list[str]]:
        return list(await asyncio.gather(*(talk(server, t) for t in ("sea", "hill", "wind"))))

    assert asyncio.run(both(on_server)) == asyncio.run(both(off_server))


def test_failed_and_cancelled_runs_leave_the_cache_consistent(
    on_server: PicoLMServer, off_server: PicoLMServer, on_workdir: Path
) -> None:
    import openai

    questions = ["crash test: " + q for q in QUESTIONS[:3]]
    conversation(on_server, questions)
    before = {p.name for p in cache_files(on_workdir) if not p.name.startswith(".run-")}
    messages: Chat = [{"role": "system", "content": SYSTEM}]
    for question, (reply, _) in zip(questions, conversation(off_server, questions), strict=True):
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]

    with pytest.raises(openai.APIError):
        ask(on_server, [*messages, {"role": "user", "content": "now fail [[crash]]"}])
    client = on_server.client()
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=[*messages, {"role": "user", "content": "slowly [[slow:0.5]]"}],
        max_tokens=20,
        stream=True,
    )
    next(iter(stream))
    stream.close()  # the client goes away mid-generation
    on_server.wait_for_run("slowly [[slow:0.5]]")
    time.sleep(1.0)

    # No partial or leftover file was adopted; the earlier states are all still there.
    after = {p.name for p in cache_files(on_workdir)}
    assert not [name for name in after if name.startswith(".run-")]
    assert before <= after
    for path in (on_workdir / "cache").rglob("*.json"):
        record = json.loads(path.read_text())
        assert "fail" not in str(record["tokens"])
        assert path.with_suffix(".kv").stat().st_size == 16 + 2 * 2 * len(record["tokens"]) * 32 * 2
    follow_up = [*messages, {"role": "user", "content": QUESTIONS[4]}]
    reply, usage = ask(on_server, follow_up)
    assert reply == ask(off_server, follow_up)[0]
    assert usage.prompt_tokens_details.cached_tokens > 0


def test_shared_system_prompt_is_saved_once_and_reused(
    on_server: PicoLMServer, off_server: PicoLMServer, on_workdir: Path
) -> None:
    system = SYSTEM + " You work for the lighthouse keeper and you love the sea."

    def prefix_entries() -> list[int]:
        lengths = []
        for path in (on_workdir / "cache").rglob("*.json"):
            tokens = json.loads(path.read_text())["tokens"]
            lengths.append(len(tokens))
        return lengths

    first = conversation(on_server, ["who are you?"], system)
    second = conversation(on_server, ["where is the lighthouse?"], system)
    third = conversation(on_server, ["is the sea deep?"], system)
    for run, question in ((first, "who are you?"), (second, "where is the lighthouse?")):
        assert run[0][0] == conversation(off_server, [question], system)[0][0]
    assert third[0][0] == conversation(off_server, ["is the sea deep?"], system)[0][0]
    # The second and third conversations start from the system prompt's state.
    assert second[0][1].prompt_tokens_details.cached_tokens >= 40
    assert third[0][1].prompt_tokens_details.cached_tokens >= 40
    # The system prompt has a state of its own (cut from the first conversation's).
    assert min(prefix_entries()) < first[0][1].prompt_tokens


def test_disk_budget_holds(picolm_files: PicoLMFiles, tmp_path: Path) -> None:
    budget = 100_000  # a few states of the tiny model (256 bytes per position)
    with serve_on(picolm_files, tmp_path, cache_max_bytes=budget) as server:
        for topic in ("sea", "hill", "wind", "trees"):
            conversation(server, [f"{topic}: {q}" for q in QUESTIONS[:4]])
            assert 0 < kv_bytes(tmp_path) <= budget


def test_foreign_and_corrupt_files_are_never_used(
    picolm_files: PicoLMFiles, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A first server fills the cache; then its files are tampered with.
    questions = QUESTIONS[:3]
    with serve_on(picolm_files, tmp_path) as server:
        expected = [r for r, _ in conversation(server, questions)]
    folders = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(folders) == 1
    for state in folders[0].glob("*.kv"):
        data = bytearray(state.read_bytes())
        data[16:20] = (999).to_bytes(4, "little")  # a wrong state of the right size...
        state.write_bytes(bytes(data))  # ...but rewritten since it was recorded
    (folders[0] / "junk.json").write_text("{}")
    # Another model's folder beside it, with a state for the same prompt.
    other = build_tiny_llama_gguf(tmp_path_factory.mktemp("other") / "other.gguf", seed=3)
    with serve_on(picolm_files, tmp_path) as server:
        replies = conversation(server, questions)
        assert [r for r, _ in replies] == expected
        assert replies[0][1].prompt_tokens_details.cached_tokens == 0  # nothing was adopted
    with serve_on(picolm_files, tmp_path, model_path=str(other)) as server:
        replies = conversation(server, questions)
        assert replies[0][1].prompt_tokens_details.cached_tokens == 0
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 2


def test_reply_function_matches_the_fed_tokens() -> None:
    # The stand-in's default reply is a function of the fed tokens only.
    assert default_pieces([1, 2, 3], None, 4) == default_pieces([1, 2, 3], None, 4)
    assert default_pieces([1, 2, 3], None, 4) != default_pieces([1, 2, 4], None, 4)


# ---- the real PicoLM ----------------------------------------------------------------------

REAL_BINARY = os.environ.get("PICOLM_BINARY")


@pytest.mark.skipif(not REAL_BINARY, reason="set PICOLM_BINARY to a PicoLM build")
def test_real_picolm_replies_are_identical_with_reuse(
    picolm_files: PicoLMFiles, tmp_path: Path
) -> None:
    assert REAL_BINARY is not None
    files = PicoLMFiles(Path(REAL_BINARY), picolm_files.model, picolm_files.stop_model, tmp_path)
    with serve_on(files, tmp_path / "on") as server:
        with_reuse = conversation(server, QUESTIONS[:6])
        edited = conversation(server, ["hello robot!", *QUESTIONS[1:4]])
    with files.serve(tmp_path / "off", picolm={"prompt_cache": False}) as server:
        without = conversation(server, QUESTIONS[:6])
        edited_without = conversation(server, ["hello robot!", *QUESTIONS[1:4]])
    assert [r for r, _ in with_reuse] == [r for r, _ in without]
    assert [r for r, _ in edited] == [r for r, _ in edited_without]
    assert all(u.prompt_tokens_details.cached_tokens > 0 for _, u in with_reuse[1:])
    assert edited[0][1].prompt_tokens_details.cached_tokens > 0  # the system prompt
