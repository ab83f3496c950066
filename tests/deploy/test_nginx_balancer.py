"""Several servers behind nginx, configured by deploy/nginx/nginx.conf: a conversation
keeps landing on the server that holds its saved prompt state, however the client names
it (or does not); a server that dies loses only its own in-flight requests, and its
conversations carry on elsewhere.

Three servers on the PicoLM stand-in with prompt-state reuse on, so that
``cached_tokens`` is what the servers really reused. Through HTTP, with the openai SDK.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.support.nginx import (
    BALANCER_KEY_HEADER,
    UPSTREAM_HEADER,
    RunningNginx,
    run_nginx,
    unavailable_reason,
)
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer

pytestmark = pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"nginx tests: {unavailable_reason()}"
)

Chat = list[dict[str, Any]]


@dataclass
class Cluster:
    nginx: RunningNginx
    servers: list[PicoLMServer]

    def client(self, **kwargs: Any) -> openai.OpenAI:
        # No retries in the client: what is retried is nginx's doing.
        return openai.OpenAI(
            base_url=f"{self.nginx.base_url}/v1", api_key="unused", max_retries=0, **kwargs
        )

    def address(self, server: PicoLMServer) -> str:
        return f"127.0.0.1:{server.port}"

    def server_at(self, address: str) -> PicoLMServer:
        return next(s for s in self.servers if self.address(s) == address)


@contextlib.contextmanager
def cluster(files: PicoLMFiles, workdir: Path) -> Iterator[Cluster]:
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(
                files.serve(
                    workdir / f"server-{n}",
                    server={"max_concurrent": 1, "max_queue": 4},
                    picolm={
                        "prompt_cache": True,
                        "cache_dir": str(workdir / f"server-{n}" / "cache"),
                    },
                )
            )
            for n in range(3)
        ]
        addresses = [f"127.0.0.1:{s.port}" for s in servers]
        nginx = stack.enter_context(run_nginx(addresses, workdir / "nginx"))
        yield Cluster(nginx, servers)


@pytest.fixture(scope="module")
def balanced(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    with cluster(picolm_files, tmp_path_factory.mktemp("balanced")) as running:
        yield running


@dataclass
class Turn:
    reply: str
    prompt_tokens: int
    cached_tokens: int
    upstream: str  # the last server nginx tried: the one that answered
    tried: list[str]
    session_id: str
    balancer_key: str


def ask(
    client: openai.OpenAI,
    messages: Chat,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> Turn:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_ID,
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=4,
        extra_headers=headers,
        **params,
    )
    completion = raw.parse()
    tried = [a.strip() for a in raw.headers[UPSTREAM_HEADER].split(",")]
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    return Turn(
        reply=completion.choices[0].message.content or "",
        prompt_tokens=completion.usage.prompt_tokens,
        cached_tokens=completion.usage.prompt_tokens_details.cached_tokens or 0,
        upstream=tried[-1],
        tried=tried,
        session_id=raw.headers["X-Session-ID"],
        balancer_key=raw.headers[BALANCER_KEY_HEADER],
    )


@dataclass
class Conversation:
    """A conversation with its own system prompt (so no state of another one applies)."""

    name: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    messages: Chat = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.messages:
            self.messages = [
                {"role": "system", "content": f"You are the robot of {self.name} by the sea."},
            ]

    def turn(self, client: openai.OpenAI, question: str) -> Turn:
        self.messages.append({"role": "user", "content": question})
        turn = ask(client, self.messages, self.headers, **self.params)
        self.messages.append({"role": "assistant", "content": turn.reply})
        return turn


IDENTIFIED_BY = {
    "x-session-id header": ({"X-Session-ID": "conv-header-1"}, {}),
    "prompt_cache_key": ({}, {"extra_body": {"prompt_cache_key": "cache-key-1"}}),
    "user": ({}, {"user": "user-1234"}),
    "its first messages": ({}, {}),
}


@pytest.mark.parametrize("how", list(IDENTIFIED_BY))
def test_second_turn_lands_on_the_same_server_and_reuses_its_state(
    balanced: Cluster, how: str
) -> None:
    headers, params = IDENTIFIED_BY[how]
    client = balanced.client()
    chat = Conversation(f"test {how}", headers=dict(headers), params=dict(params))
    first = chat.turn(client, "hello robot, how is the world today?")
    second = chat.turn(client, "and what is deep in the sea?")
    third = chat.turn(client, "is the wind strong in the trees?")

    assert second.upstream == first.upstream and third.upstream == first.upstream
    # Each turn started from the whole state of the turn before.
    assert second.cached_tokens == first.prompt_tokens
    assert third.cached_tokens == second.prompt_tokens
    # nginx hashed exactly the id the server derived and returned.
    assert first.balancer_key == first.session_id == second.session_id == third.session_id
    if "X-Session-ID" in headers:
        assert first.session_id == headers["X-Session-ID"]


def test_the_server_and_the_balancer_derive_the_same_id_from_any_body(balanced: Cluster) -> None:
    """Text parts, a developer message, non-ASCII text: nginx's script and the server
    agree, so a client may send the returned id back and land on the same server."""
    client = balanced.client()
    messages: Chat = [
        {"role": "developer", "content": "Réponds en français, s'il te plaît. 🌊"},
        {"role": "assistant", "content": "Bonjour !"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Quelle heure"},
                {"type": "text", "text": "est-il ?"},
            ],
        },
    ]
    turn = ask(client, messages)
    assert turn.session_id.startswith("chat-")
    assert turn.balancer_key == turn.session_id
    echoed = ask(client, messages, {"X-Session-ID": turn.session_id})
    assert echoed.upstream == turn.upstream
    assert echoed.balancer_key == turn.session_id


def test_requests_without_a_body_are_spread_and_health_answers(balanced: Cluster) -> None:
    health = httpx.get(f"{balanced.nginx.base_url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = balanced.client().models.list()
    assert [m.id for m in models.data] == [MODEL_ID]


def test_conversations_spread_over_the_servers(balanced: Cluster) -> None:
    client = balanced.client()
    upstreams = {
        Conversation(f"spread {n}").turn(client, "hello robot").upstream for n in range(12)
    }
    assert len(upstreams) >= 2, upstreams


# ---- one server dies ---------------------------------------------------------------------


def one_per_server(cluster: Cluster, client: openai.OpenAI) -> dict[str, Conversation]:
    """A conversation (named by X-Session-ID) that hashes to each server, first turn done."""
    found: dict[str, Conversation] = {}
    for n in range(60):
        chat = Conversation(f"kill {n}", headers={"X-Session-ID": f"conv-kill-{n}"})
        turn = chat.turn(client, "hello robot [[slow:0]]")
        found.setdefault(turn.upstream, chat)
        if len(found) == len(cluster.servers):
            return found
    raise AssertionError(f"60 conversations reached only {sorted(found)}")


@dataclass
class StreamResult:
    text: str = ""
    chunks: int = 0
    finish_reason: str | None = None
    error: BaseException | None = None
    started: threading.Event = field(default_factory=threading.Event)


def stream_turn(client: openai.OpenAI, chat: Conversation, result: StreamResult) -> None:
    messages = [*chat.messages, {"role": "user", "content": "tell me a long story [[slow:0.15]]"}]
    try:
        stream = client.chat.completions.create(
            model=MODEL_ID,
            messages=messages,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=24,
            stream=True,
            extra_headers=chat.headers,
        )
        for chunk in stream:
            result.chunks += 1
            if chunk.choices:
                result.text += chunk.choices[0].delta.content or ""
                if result.text:
                    result.started.set()
                result.finish_reason = chunk.choices[0].finish_reason or result.finish_reason
    except Exception as exc:  # the victim's stream: cut off mid-way
        result.error = exc
    finally:
        result.started.set()


def wait_until(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill_server(server: PicoLMServer) -> None:
    """SIGKILL, as when a machine dies; then end the engine runs it orphaned."""
    process = psutil.Process(server.process.pid)
    orphans = process.children(recursive=True)
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    for orphan in orphans:
        with contextlib.suppress(psutil.NoSuchProcess):
            os.killpg(orphan.pid, signal.SIGKILL)


def test_a_killed_server_loses_only_its_in_flight_requests_and_its_conversations_move_on(
    picolm_files: PicoLMFiles, tmp_path: Path
) -> None:
    with cluster(picolm_files, tmp_path) as running:
        client = running.client(timeout=120)
        chats = one_per_server(running, client)
        victim_address = sorted(chats)[0]
        victim = running.server_at(victim_address)
        victim_chat = chats[victim_address]

        # One slow stream per server, all in flight.
        results = {address: StreamResult() for address in chats}
        threads = [
            threading.Thread(target=stream_turn, args=(client, chats[a], results[a])) for a in chats
        ]
        for thread in threads:
            thread.start()
        for result in results.values():
            assert result.started.wait(60)

        # And a non-streamed request of another conversation on the victim, waiting in
        # its queue (nothing sent to the client yet): nginx will retry it elsewhere.
        queued_chat = Conversation(
            "kill queued", headers=dict(victim_chat.headers), messages=list(victim_chat.messages)
        )
        queued: dict[str, Any] = {}

        def queued_turn() -> None:
            try:
                queued["turn"] = queued_chat.turn(client, "and the house on the hill? [[slow:0]]")
            except Exception as exc:
                queued["error"] = exc

        queued_thread = threading.Thread(target=queued_turn)
        queued_thread.start()
        wait_until(
            lambda: httpx.get(f"{victim.base_url}/health", timeout=5).json()["queued"] == 1,
            "the request queued on the victim",
        )

        kill_server(victim)
        for thread in [*threads, queued_thread]:
            thread.join(120)
            assert not thread.is_alive()

        # The victim's stream is cut off; the others finish whole.
        lost = results[victim_address]
        assert lost.finish_reason is None
        assert lost.error is not None, "the victim's stream should not end normally"
        for address, result in results.items():
            if address != victim_address:
                assert result.error is None, result.error
                assert result.finish_reason == "length"
                assert len(result.text.split()) >= 20

        # The queued request was never answered by the victim: nginx retried it.
        assert "error" not in queued, queued.get("error")
        retried: Turn = queued["turn"]
        assert retried.tried[0] == victim_address and retried.upstream != victim_address

        # The victim's conversation carries on on another server, and reuses state there.
        moved = [
            victim_chat.turn(client, question)
            for question in ("what is deep in the sea? [[slow:0]]", "and the trees? [[slow:0]]")
        ]
        assert moved[0].upstream != victim_address
        assert moved[1].upstream == moved[0].upstream
        assert moved[1].cached_tokens == moved[0].prompt_tokens

        # The other conversations are still where their state is.
        for address, chat in chats.items():
            if address != victim_address:
                before = chat.turn(client, "thank you [[slow:0]]")
                after = chat.turn(client, "good night [[slow:0]]")
                assert before.upstream == after.upstream == address
                assert after.cached_tokens == before.prompt_tokens
