"""A NUL character in a prompt: PicoLM would end the prompt there (it reads its prompt as
a C string), so its server refuses the request naming the field; llama.cpp takes the
character like any other, so its server keeps it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import requires_llama
from tests.http.test_errors import assert_error, marker
from tests.http.test_requests import post_chat
from tests.support.picolm_setup import PicoLMServer
from tests.support.server import RunningServer


def string_content(tag: str) -> tuple[list[dict[str, Any]], str]:
    messages = [
        {"role": "system", "content": tag},
        {"role": "user", "content": "before\u0000after"},
    ]
    return messages, "messages[1].content"


def text_parts(tag: str) -> tuple[list[dict[str, Any]], str]:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b\u0000"}]
    messages = [{"role": "system", "content": tag}, {"role": "user", "content": parts}]
    return messages, "messages[1].content[1].text"


@pytest.mark.parametrize("case", [string_content, text_parts])
def test_picolm_refuses_a_nul_naming_the_field(picolm_server: PicoLMServer, case: Any) -> None:
    tag = marker()
    messages, param = case(tag)
    response = post_chat(picolm_server, {"messages": messages})
    error = assert_error(response, 400, type_="invalid_request_error")
    assert error["param"] == param
    assert "NUL" in error["message"]
    # Refused before any engine run: nothing was started with a truncated prompt.
    assert picolm_server.runs_with(tag) == []
    response = post_chat(picolm_server, {"messages": [{"role": "user", "content": "[[reply:ok]]"}]})
    assert response.status_code == 200, response.text


@requires_llama
def test_llama_cpp_keeps_a_nul(llama_server: RunningServer) -> None:
    client = llama_server.client(max_retries=0, timeout=120)

    def prompt_tokens(content: str) -> int:
        reply = client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": content}],
            max_tokens=1,
            temperature=0,
        )
        assert reply.usage is not None
        return reply.usage.prompt_tokens

    # Every character reached the model, the ones after the NUL included.
    assert prompt_tokens("Say hi.\u0000 Then say bye.") > prompt_tokens("Say hi.\u0000")
    assert prompt_tokens("Say hi.\u0000") > prompt_tokens("Say hi.")
