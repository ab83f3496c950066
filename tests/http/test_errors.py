"""Every error the server returns, over HTTP: OpenAI's envelope, status, type, code, param."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TEST_API_KEY
from tests.http.test_requests import AUTH, post_chat, sse_payloads, user
from tests.support.openapi import check_schema
from tests.support.picolm_setup import (
    MODEL_ID,
    PicoLMFiles,
    PicoLMServer,
    process_gone,
    wait_until_gone,
)


def marker() -> str:
    return f"id-{uuid.uuid4().hex[:12]}"


def assert_error(
    response: httpx.Response, status: int, *, type_: str, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    check_schema(body, "ErrorResponse")
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == type_
    if code is not None:
        assert error["code"] == code
    return dict(error)


@pytest.fixture(scope="module")
def client(picolm_server: PicoLMServer) -> openai.OpenAI:
    return picolm_server.client(max_retries=0, timeout=30)


# ---- 400 -------------------------------------------------------------------------------------


def test_malformed_json(picolm_server: PicoLMServer) -> None:
    response = httpx.post(
        f"{picolm_server.base_url}/v1/chat/completions",
        content=b'{"model": "tiny-picolm", "messages": [',
        headers={**AUTH, "Content-Type": "application/json"},
    )
    error = assert_error(response, 400, type_="invalid_request_error")
    assert "JSON" in error["message"]


def test_body_that_is_not_an_object(picolm_server: PicoLMServer) -> None:
    response = httpx.post(
        f"{picolm_server.base_url}/v1/chat/completions", json=[1, 2], headers=AUTH
    )
    assert_error(response, 400, type_="invalid_request_error")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": user("hi"), "temperature": 5}, "temperature"),
        ({"messages": user("hi"), "temperature": "hot"}, "temperature"),
        ({"messages": user("hi"), "max_tokens": 0}, "max_tokens"),
        ({"messages": user("hi"), "top_p": 1.5}, "top_p"),
        ({"messages": user("hi"), "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
            "messages[0].content[0].text",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].type",
        ),
    ],
)
def test_invalid_parameter_names_the_field(
    picolm_server: PicoLMServer, body: dict[str, Any], param: str
) -> None:
    error = assert_error(post_chat(picolm_server, body), 400, type_="invalid_request_error")
    assert error["param"] == param
    assert param.split(".")[0].split("[")[0] in error["message"]


def test_deeply_nested_json_is_refused_not_a_crash(picolm_server: PicoLMServer) -> None:
    depth = 10_000  # well past Python's recursion limit, under the test server's body limit
    body = b'{"model": "x", "messages": [], "metadata": ' + b"[" * depth + b"]" * depth + b"}"
    response = httpx.post(
        f"{picolm_server.base_url}/v1/chat/completions",
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    error = assert_error(response, 400, type_="invalid_request_error")
    assert "nested" in error["message"]


def test_lone_surrogate_escape_is_refused_not_a_crash(picolm_server: PicoLMServer) -> None:
    # "\ud800" is valid JSON but stands for no character; a pair ("\ud83d\ude00") is fine.
    body = b'{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": "%s"}]}'
    for content, status in ((b"\\ud800 hi", 400), (b"\\ud83d\\ude00 hi", 200)):
        response = httpx.post(
            f"{picolm_server.base_url}/v1/chat/completions",
            content=body % (MODEL_ID.encode(), content),
            headers={**AUTH, "Content-Type": "application/json"},
            timeout=30,
        )
        if status == 400:
            error = assert_error(response, 400, type_="invalid_request_error")
            assert "Unicode" in error["message"]
        else:
            assert response.status_code == 200, response.text


def test_missing_model_is_named(picolm_server: PicoLMServer) -> None:
    response = httpx.post(
        f"{picolm_server.base_url}/v1/chat/completions",
        json={"messages": user("hi")},
        headers=AUTH,
    )
    error = assert_error(response, 400, type_="invalid_request_error")
    assert error["param"] == "model" and "model" in error["message"]


def test_invalid_parameter_through_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_ID, messages=user("hi"), temperature=3)
    assert caught.value.param == "temperature"


def test_context_length_exceeded(client: openai.OpenAI, picolm_server: PicoLMServer) -> None:
    long_text = " ".join(f"w{i}" for i in range(600))  # well over the 512-token context
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL_ID, messages=user(long_text), stream=stream)
        assert caught.value.code == "context_length_exceeded"
        assert caught.value.param == "messages"
        assert "512" in caught.value.message
    response = post_chat(picolm_server, {"messages": user(long_text)})
    assert_error(response, 400, type_="invalid_request_error", code="context_length_exceeded")


# ---- 401 -------------------------------------------------------------------------------------


def test_missing_api_key(picolm_server: PicoLMServer) -> None:
    for path in ("/v1/models", f"/v1/models/{MODEL_ID}"):
        response = httpx.get(f"{picolm_server.base_url}{path}")
        assert_error(response, 401, type_="invalid_request_error", code="invalid_api_key")
    response = httpx.post(
        f"{picolm_server.base_url}/v1/chat/completions",
        json={"model": MODEL_ID, "messages": user("hi")},
    )
    assert_error(response, 401, type_="invalid_request_error", code="invalid_api_key")


@pytest.mark.parametrize(
    "header", [f"Bearer {TEST_API_KEY}x", "Bearer", TEST_API_KEY, f"Basic {TEST_API_KEY}"]
)
def test_wrong_api_key(picolm_server: PicoLMServer, header: str) -> None:
    response = httpx.get(f"{picolm_server.base_url}/v1/models", headers={"Authorization": header})
    assert_error(response, 401, type_="invalid_request_error", code="invalid_api_key")


def test_wrong_api_key_through_sdk(picolm_server: PicoLMServer) -> None:
    client = openai.OpenAI(
        base_url=picolm_server.openai_base_url, api_key="sk-wrong", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=MODEL_ID, messages=user("hi"))
    assert caught.value.status_code == 401


# ---- 404, 405 ----------------------------------------------------------------------------


def test_unknown_route(picolm_server: PicoLMServer) -> None:
    response = httpx.get(f"{picolm_server.base_url}/v1/nothing-here", headers=AUTH)
    error = assert_error(response, 404, type_="invalid_request_error")
    assert "/v1/nothing-here" in error["message"]


def test_wrong_method(picolm_server: PicoLMServer) -> None:
    response = httpx.get(f"{picolm_server.base_url}/v1/chat/completions", headers=AUTH)
    assert_error(response, 405, type_="invalid_request_error")


def test_unknown_model(client: openai.OpenAI, picolm_server: PicoLMServer) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-9", messages=user("hi"))
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-9")
    assert caught.value.code == "model_not_found"
    response = post_chat(picolm_server, {"model": "gpt-9", "messages": user("hi")})
    error = assert_error(response, 404, type_="invalid_request_error", code="model_not_found")
    assert "gpt-9" in error["message"]


# ---- 413 -------------------------------------------------------------------------------------


def big_body() -> bytes:
    body = {"model": MODEL_ID, "messages": user("x" * 70_000)}  # max_body is 64 KiB
    return json.dumps(body).encode()


def test_oversized_body_with_content_length(picolm_server: PicoLMServer) -> None:
    response = httpx.post(
        f"{picolm_server.base_url}/v1/chat/completions",
        content=big_body(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert_error(response, 413, type_="invalid_request_error", code="request_too_large")


def test_oversized_body_chunked(picolm_server: PicoLMServer) -> None:
    data = big_body()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), 8192):
            yield data[start : start + 8192]

    response = httpx.post(
        f"{picolm_server.base_url}/v1/chat/completions",
        content=chunks(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, type_="invalid_request_error", code="request_too_large")


def test_oversized_body_through_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL_ID, messages=user("x" * 70_000))
    assert caught.value.status_code == 413


# ---- 500: the engine fails -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directive", "expected"), [("[[crash]]", "status 3"), ("[[segv]]", "SIGSEGV")]
)
def test_engine_crash_then_server_goes_on(
    client: openai.OpenAI, picolm_server: PicoLMServer, directive: str, expected: str
) -> None:
    response = post_chat(picolm_server, {"messages": user(directive)})
    error = assert_error(response, 500, type_="server_error", code="engine_error")
    assert expected in error["message"]
    # The engine's stderr is for the log, not for the client.
    assert "simulated engine failure" not in error["message"]
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL_ID, messages=user(directive))
    completion = client.chat.completions.create(model=MODEL_ID, messages=user("[[reply:ok]]"))
    assert completion.choices[0].message.content == "ok"
    health = httpx.get(f"{picolm_server.base_url}/health").json()
    assert health["running"] == 0 and health["queued"] == 0


def test_engine_failure_after_the_first_byte_is_an_error_event(
    client: openai.OpenAI, picolm_server: PicoLMServer
) -> None:
    response = post_chat(picolm_server, {"messages": user("[[crash]]"), "stream": True})
    assert response.status_code == 200
    payloads = sse_payloads(response.text)
    assert "[DONE]" not in payloads
    last = json.loads(payloads[-1])
    check_schema(last, "ErrorResponse")
    assert last["error"]["code"] == "engine_error" and last["error"]["type"] == "server_error"
    # The text before the crash was sent as ordinary chunks.
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(model=MODEL_ID, messages=user("[[crash]]"), stream=True)
        )
    assert client.chat.completions.create(model=MODEL_ID, messages=user("[[reply:ok]]"))


def test_engine_that_cannot_start(picolm_files: PicoLMFiles, tmp_path: Path) -> None:
    """A model file that PicoLM cannot load: every request fails, the server stays up."""
    model = tmp_path / "broken.gguf"
    model.write_bytes(picolm_files.model.read_bytes())
    with picolm_files.serve(tmp_path, picolm={"model_path": str(model)}) as server:
        model.write_bytes(b"GGUF not really")
        response = post_chat(server, {"messages": user("hi")})
        error = assert_error(response, 500, type_="server_error", code="engine_error")
        assert error["message"] == "The PicoLM engine exited with status 1."
        # What PicoLM said is in the server log.
        assert "Failed to load model" in server.log()
        assert httpx.get(f"{server.base_url}/health").status_code == 200


# ---- 504, 429, and clients that leave ---------------------------------------------------


@pytest.fixture(scope="module")
def limits_server(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    """One generation at a time, one waiting, and a short time limit."""
    workdir = tmp_path_factory.mktemp("limits-server")
    with picolm_files.serve(
        workdir, server={"max_queue": 1}, picolm={"timeout_seconds": 1.5}
    ) as server:
        yield server


def test_timeout(limits_server: PicoLMServer) -> None:
    tag = marker()
    response = post_chat(limits_server, {"messages": user(f"{tag} [[child]] [[hang]]")})
    error = assert_error(response, 504, type_="timeout_error", code="timeout")
    assert "1.5" in error["message"]
    run = limits_server.wait_for_run(tag, children=1)
    wait_until_gone([run.pid, *run.child_pids], timeout=5)


def test_timeout_in_stream_is_an_error_event(limits_server: PicoLMServer) -> None:
    response = post_chat(limits_server, {"messages": user("[[hang]]"), "stream": True})
    assert response.status_code == 200
    payloads = sse_payloads(response.text)
    assert json.loads(payloads[-1])["error"]["code"] == "timeout"


def health(server: PicoLMServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.base_url}/health").json()
    return body


def wait_for_health(server: PicoLMServer, **expected: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = health(server)
        if all(state[key] == value for key, value in expected.items()):
            return
        time.sleep(0.02)
    raise AssertionError(f"health never showed {expected}: {health(server)}")


def test_queue_full_is_429_and_a_client_leaving_the_queue_frees_its_place(
    limits_server: PicoLMServer,
) -> None:
    running_tag, queued_tag = marker(), marker()
    with httpx.Client(base_url=limits_server.base_url, timeout=30) as http:
        # A generation that holds the only slot (its stream is kept open, unread).
        body = {"model": MODEL_ID, "messages": user(f"{running_tag} [[slow:0.2]]")}
        with http.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True, "max_tokens": 500}
        ) as running:
            assert running.status_code == 200
            wait_for_health(limits_server, running=1)
            # A second request waits in the queue until its client gives up.
            queued_error: list[BaseException] = []

            def queued_request() -> None:
                try:
                    httpx.post(
                        f"{limits_server.base_url}/v1/chat/completions",
                        json={"model": MODEL_ID, "messages": user(f"{queued_tag} hi")},
                        timeout=httpx.Timeout(30, read=1.0),
                    )
                except httpx.ReadTimeout as exc:
                    queued_error.append(exc)

            thread = threading.Thread(target=queued_request)
            thread.start()
            wait_for_health(limits_server, queued=1)
            # The queue (max_queue: 1) is full: refused at once, with Retry-After.
            response = http.post("/v1/chat/completions", json=body)
            error = assert_error(
                response, 429, type_="rate_limit_error", code="rate_limit_exceeded"
            )
            assert int(response.headers["Retry-After"]) >= 1
            assert "busy" in error["message"]
            thread.join()
            assert queued_error, "the queued request should have timed out on the client"
            # The client that left is out of the queue; it never reached the engine.
            wait_for_health(limits_server, queued=0, running=1)
            assert not limits_server.runs_with(queued_tag)
    wait_for_health(limits_server, queued=0, running=0)
    run = limits_server.wait_for_run(running_tag)
    wait_until_gone([run.pid], timeout=5)


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_ends_the_engine(picolm_server: PicoLMServer, stream: bool) -> None:
    """The engine process and the child it started end when the client goes away: the
    run, hundreds of slow tokens long, is still going when the client leaves, and it is
    ended by the server, not by finishing (a run that finishes logs its exit)."""
    tag = marker()
    body = {
        "model": MODEL_ID,
        "messages": user(f"{tag} [[child]] [[slow:0.05]]"),
        "max_tokens": 2000,
        "stream": stream,
    }
    with httpx.Client(base_url=picolm_server.base_url, headers=AUTH, timeout=30) as http:
        if stream:
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                assert next(lines).startswith("data: ")
                run = picolm_server.wait_for_run(tag, children=1)
                assert not process_gone(run.pid)
        else:
            with pytest.raises(httpx.ReadTimeout):
                http.post("/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=1))
            run = picolm_server.wait_for_run(tag, children=1)
    pids = [run.pid, *run.child_pids]
    wait_until_gone(pids, timeout=10)
    ended = next(entry for entry in picolm_server.history() if entry.pid == run.pid)
    assert ended.exit is None, f"the engine ran to its end ({ended.exit}) after the client left"
    wait_for_health(picolm_server, running=0, queued=0)
