"""Errors that name what the client sent: a prompt too long for the context names the
field it came in (``input`` on Responses, ``prompt`` on legacy completions, ``messages``
on chat), and Anthropic's errors carry the request's id, in the body and in the
``request-id`` header its SDK reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.http.test_errors import assert_error
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer


@pytest.fixture(scope="module")
def small_context(picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory) -> Any:
    workdir = tmp_path_factory.mktemp("small-context")
    with picolm_files.serve(
        workdir,
        picolm={"context_length": 64},
        responses={"store_path": str(Path(workdir) / "responses.sqlite3")},
    ) as server:
        yield server


LONG = " ".join(f"word{n}" for n in range(200))


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}, "messages"),
        ("/v1/responses", {"input": LONG}, "input"),
        ("/v1/responses", {"input": [{"role": "user", "content": LONG}]}, "input"),
        ("/v1/completions", {"prompt": LONG}, "prompt"),
    ],
)
def test_context_length_exceeded_names_the_field(
    small_context: PicoLMServer, path: str, body: dict[str, Any], field: str
) -> None:
    response = httpx.post(
        small_context.base_url + path, json={"model": MODEL_ID, **body}, timeout=30
    )
    error = assert_error(
        response, 400, type_="invalid_request_error", code="context_length_exceeded"
    )
    assert error["param"] == field
    assert f"your {field} resulted in" in error["message"]
    assert f"the length of the {field}" in error["message"]


def test_responses_stream_names_input(small_context: PicoLMServer) -> None:
    response = httpx.post(
        small_context.base_url + "/v1/responses",
        json={"model": MODEL_ID, "input": LONG, "stream": True},
        timeout=30,
    )
    error = assert_error(response, 400, type_="invalid_request_error")
    assert error["param"] == "input"


def anthropic_post(server: PicoLMServer, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        server.base_url + "/v1/messages",
        json=body,
        headers={"Authorization": f"Bearer {server.api_key}", **headers},
        timeout=30,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL_ID, "max_tokens": 4},  # no messages: 400
        {"model": "nope", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
    ],
)
def test_anthropic_errors_carry_the_request_id(
    picolm_server: PicoLMServer, body: dict[str, Any]
) -> None:
    response = anthropic_post(picolm_server, body)
    assert response.status_code in (400, 404)
    document = response.json()
    assert document["type"] == "error"
    assert document["request_id"] == response.headers["x-request-id"]
    assert document["request_id"] == response.headers["request-id"]
    # A client's own id is kept, as on every route.
    response = anthropic_post(picolm_server, body, **{"x-request-id": "client-id-42"})
    assert response.json()["request_id"] == "client-id-42"
    assert response.headers["request-id"] == "client-id-42"


def test_the_anthropic_sdk_sees_the_request_id(picolm_server: PicoLMServer) -> None:
    client = anthropic.Anthropic(
        base_url=picolm_server.base_url, api_key=picolm_server.api_key, max_retries=0
    )
    with pytest.raises(anthropic.NotFoundError) as raised:
        client.messages.create(
            model="nope", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.request_id
    assert raised.value.body["request_id"] == raised.value.request_id  # type: ignore[index]


def test_anthropic_success_has_the_request_id_header(picolm_server: PicoLMServer) -> None:
    body = {
        "model": MODEL_ID,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "[[reply:ok]]"}],
    }
    response = anthropic_post(picolm_server, body)
    assert response.status_code == 200
    assert response.headers["request-id"] == response.headers["x-request-id"]
