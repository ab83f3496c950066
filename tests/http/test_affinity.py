"""The conversation id a load balancer keeps requests together by: derived in order from
the header, prompt_cache_key, user and the first messages; returned on every chat
completion, streamed or not (over HTTP on the app in-process)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from picolm_server.api.chat.types import ChatCompletionRequest
from picolm_server.http.affinity import session_id
from tests.support.inprocess import InProcessServer
from tests.support.picolm_setup import MODEL_ID


def request(**fields: Any) -> ChatCompletionRequest:
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        **fields,
    }
    return ChatCompletionRequest.model_validate(body)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def test_the_header_comes_first_and_is_used_as_sent() -> None:
    assert session_id(request(user="u", prompt_cache_key="k"), " conv-42 ") == "conv-42"


def test_prompt_cache_key_then_user() -> None:
    assert session_id(request(user="u", prompt_cache_key="k"), None) == "key-" + digest("k")
    assert session_id(request(user="u"), "") == "user-" + digest("u")
    assert session_id(request(user="u", prompt_cache_key=""), "  ") == "user-" + digest("u")


def test_otherwise_the_first_system_and_user_messages() -> None:
    assert session_id(request(), None) == "chat-" + digest("Be brief.\x00Hi")


def test_the_id_stays_the_same_on_later_turns() -> None:
    first = request()
    later = request(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "How are you?"},
            {"role": "system", "content": "A later system message changes nothing."},
        ]
    )
    assert session_id(first, None) == session_id(later, None)


def test_text_parts_developer_messages_and_no_system_message() -> None:
    parts = request(
        messages=[
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}],
            },
        ]
    )
    assert session_id(parts, None) == "chat-" + digest("Be brief.\x00Hello\nthere")
    no_system = request(messages=[{"role": "user", "content": "Hi"}])
    assert session_id(no_system, None) == "chat-" + digest("\x00Hi")


def test_conversations_that_differ_get_different_ids() -> None:
    ids = {
        session_id(request(messages=[{"role": "user", "content": q}]), None)
        for q in ("a", "b", "c")
    }
    assert len(ids) == 3


# ---- over HTTP -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_chat_completion_returns_its_id(app_server: InProcessServer) -> None:
    client = app_server.client(max_retries=0)
    messages: list[Any] = [{"role": "user", "content": "hello robot"}]
    plain = await client.chat.completions.with_raw_response.create(
        model=MODEL_ID, messages=messages, max_tokens=2
    )
    assert plain.headers["X-Session-ID"] == "chat-" + digest("\x00hello robot")
    named = await client.chat.completions.with_raw_response.create(
        model=MODEL_ID,
        messages=messages,
        max_tokens=2,
        stream=True,
        extra_headers={"X-Session-ID": "conv-7"},
    )
    assert named.headers["X-Session-ID"] == "conv-7"
    assert named.headers["content-type"].startswith("text/event-stream")
    chunks = [chunk async for chunk in named.parse()]
    assert chunks[-1].choices[0].finish_reason == "length"
