"""Chat completions on a real server driving the PicoLM stand-in, where the engine's
contract is the point: N+1 tokens for ``-n N``, the EOS text and final newline, UTF-8
split across tokens, the arguments and the prompt on stdin, the process a stop ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.http.test_requests import marker, user
from tests.support.fake_picolm import reply_pieces
from tests.support.picolm_setup import MODEL_ID, PicoLMServer


@pytest.fixture(scope="module")
def client(picolm_server: PicoLMServer) -> openai.OpenAI:
    return picolm_server.client(max_retries=0, timeout=30)


def complete_text(client: openai.OpenAI, content: str, *, stream: bool = False, **kw: Any) -> str:
    if stream:
        chunks = client.chat.completions.create(
            model=MODEL_ID, messages=user(content), stream=True, **kw
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    completion = client.chat.completions.create(model=MODEL_ID, messages=user(content), **kw)
    return completion.choices[0].message.content or ""


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("limit", [1, 2, 7])
def test_max_tokens_is_exact(client: openai.OpenAI, field: str, limit: int) -> None:
    """PicoLM generates N+1 tokens for -n N: the server must still give exactly N."""
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=user(f"tell me a story {marker()}"), **{field: limit}
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == limit
    assert completion.choices[0].finish_reason == "length"
    content = completion.choices[0].message.content
    assert content is not None and len(content.split(" ")) == limit


def test_reply_ending_exactly_at_the_budget_is_stop(client: openai.OpenAI) -> None:
    # Three words then EOS: with max_tokens=3 the EOS is the N+1th token and ends it.
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=user("[[reply:red green blue]]"), max_tokens=3
    )
    assert completion.choices[0].message.content == "red green blue"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert completion.choices[0].finish_reason in ("stop", "length")


def test_eos_text_and_trailing_newline_never_in_reply(client: openai.OpenAI) -> None:
    for stream in (False, True):
        text = complete_text(client, "[[reply:line one\nline two]]", stream=stream)
        assert text == "line one\nline two"
    text = complete_text(client, "[[reply:ends with newline\n]]")
    assert text == "ends with newline\n"


def test_split_utf8_is_decoded(client: openai.OpenAI) -> None:
    reply = "héllo wörld 😀 中文 ok"
    # The stand-in writes every byte of a non-ASCII character on its own.
    assert any(len(piece) == 1 and piece[0] >= 0x80 for piece in reply_pieces(reply))
    for stream in (False, True):
        assert complete_text(client, f"[[reply:{reply}]]", stream=stream) == reply


def test_model_that_stops_at_once(client: openai.OpenAI) -> None:
    for stream in (False, True):
        assert complete_text(client, "[[eos-now]]", stream=stream) == ""
    completion = client.chat.completions.create(model=MODEL_ID, messages=user("[[eos-now]]"))
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 0


def test_stop_sequence_ends_the_engine_process(
    client: openai.OpenAI, picolm_server: PicoLMServer
) -> None:
    tag = marker()
    text = complete_text(client, f"{tag} [[slow:0.02]]", stop=" the", max_tokens=2000)
    assert " the" not in text
    run = picolm_server.wait_for_run(tag)
    assert run.exit is None  # killed, not run to its end


def test_parameters_reach_the_engine_and_the_prompt_goes_on_stdin(
    client: openai.OpenAI, picolm_server: PicoLMServer
) -> None:
    tag = marker()
    client.chat.completions.create(
        model=MODEL_ID,
        messages=user(f"secret {tag} [[reply:ok]]"),
        max_tokens=9,
        temperature=0.25,
        top_p=0.5,
        seed=1234,
        # Harmless parameters a local model ignores are accepted.
        user="someone",
        presence_penalty=0.5,
    )
    run = picolm_server.wait_for_run(tag)
    args = dict(zip(run.argv[2::2], run.argv[3::2], strict=False))
    assert float(args["-t"]) == 0.25 and float(args["-k"]) == 0.5
    assert args["-s"] == "1234" and args["-n"] == "8" and args["-j"] == "1"
    assert int(args["-c"]) == 512
    assert "-p" not in run.argv
    assert run.prompt is not None and f"secret {tag}" in run.prompt
    assert not any(tag in arg for arg in run.argv)


def test_prompt_never_in_the_process_command_line(
    client: openai.OpenAI, picolm_server: PicoLMServer
) -> None:
    """Read /proc/PID/cmdline of the engine while it runs: no part of the prompt is there."""
    tag = marker()
    cmdline = Path("/proc/self/cmdline")
    if not cmdline.exists():
        pytest.skip("needs /proc")
    with client.chat.completions.with_streaming_response.create(
        model=MODEL_ID, messages=user(f"private {tag} [[slow:0.05]]"), stream=True, max_tokens=200
    ) as response:
        lines = response.iter_lines()
        next(lines)
        run = picolm_server.wait_for_run(tag)
        seen = Path(f"/proc/{run.pid}/cmdline").read_bytes()
    assert seen and b"picolm" in seen
    assert tag.encode() not in seen and b"private" not in seen


def test_same_prompt_and_seed_same_reply(client: openai.OpenAI) -> None:
    content = f"deterministic {marker()}"
    first = complete_text(client, content, seed=7, temperature=0.9, max_tokens=6)
    second = complete_text(client, content, seed=7, temperature=0.9, max_tokens=6)
    other = complete_text(client, content, seed=8, temperature=0.9, max_tokens=6)
    assert first == second
    assert first != other
