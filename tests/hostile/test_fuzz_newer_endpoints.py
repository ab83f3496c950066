"""Property-based fuzzing of the APIs beside chat completions: Responses (create, and the
stored response's routes with hostile ids and query strings), legacy completions,
embeddings, Anthropic Messages, and ``/tokenize`` / ``/detokenize``.

OpenAI's bodies are drawn from its OpenAPI description (``CreateResponse``,
``CreateCompletionRequest``, ``CreateEmbeddingRequest``); Anthropic's from the official
SDK's own request type (its JSON Schema, through pydantic); the tokenizer routes' from
their few fields. Each draws values of the declared types mostly and hostile values
often, against a server on the PicoLM stand-in (embeddings also on the embedded model).
The properties: no 5xx but the documented engine ones, every error in its API's
envelope (Anthropic's with the request's id), every stream made of JSON events, and the
server alive after. Bounded: a few hundred cases in all.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import requires_llama
from tests.support.fuzzing import (
    ANY_JSON,
    DOCUMENTED_5XX,
    SpecStrategies,
    assert_envelope,
    assert_well_formed,
)
from tests.support.openapi import OPENAPI_PATH, requires_spec
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer
from tests.support.server import RunningServer

pytestmark = requires_spec


def fuzz_settings(cases: int) -> settings:
    return settings(
        max_examples=cases,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module")
def openai_spec() -> SpecStrategies:
    return SpecStrategies(json.loads(OPENAPI_PATH.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def fuzz_server(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    workdir = tmp_path_factory.mktemp("fuzz-newer")
    with picolm_files.serve(
        workdir,
        picolm={"max_tokens": 8},
        responses={"store_path": str(workdir / "responses.sqlite3")},
    ) as server:
        yield server


@pytest.fixture(scope="module")
def http(fuzz_server: PicoLMServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.base_url, timeout=60) as client:
        yield client


MODELS = st.sampled_from([MODEL_ID, MODEL_ID, MODEL_ID]) | st.text(max_size=10)


def openai_bodies(spec: SpecStrategies, schema: str, **fields: Any) -> Any:
    """Bodies of an OpenAI request schema: the served model mostly, short replies."""
    properties = spec.properties({"$ref": f"#/components/schemas/{schema}"})
    drawn = {name: spec.value(sub) for name, sub in properties.items()}
    drawn.update(fields)
    required = {"model"} | {name for name in ("input", "prompt") if name in drawn}
    return st.fixed_dictionaries(
        {name: drawn[name] for name in required},
        optional={
            **{name: value for name, value in drawn.items() if name not in required},
            "unknown_field": ANY_JSON,
        },
    )


def post_json(http: httpx.Client, path: str, body: Any) -> httpx.Response:
    return http.post(
        path,
        content=json.dumps(body, allow_nan=False),
        headers={"Content-Type": "application/json"},
    )


def assert_sse_json(response: httpx.Response) -> None:
    """Every ``data:`` line of a stream is a JSON value (or chat's ``[DONE]``)."""
    for line in response.text.split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            json.loads(line[len("data: ") :])
        else:
            assert line == "" or line.startswith(("event: ", ":")), line


def assert_openai_answer(response: httpx.Response) -> None:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        assert response.status_code == 200
        assert_sse_json(response)
    else:
        assert_well_formed(response)


# ---- Responses -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def response_bodies(openai_spec: SpecStrategies) -> Any:
    properties = openai_spec.properties({"$ref": "#/components/schemas/CreateResponse"})
    item = openai_spec.value({"$ref": "#/components/schemas/InputItem"}, 1)
    return openai_bodies(
        openai_spec,
        "CreateResponse",
        model=MODELS,
        input=st.text(max_size=40) | st.lists(item, min_size=1, max_size=3) | ANY_JSON,
        max_output_tokens=st.integers(16, 24) | openai_spec.value(properties["max_output_tokens"]),
    )


@fuzz_settings(120)
@given(data=st.data())
def test_responses_fuzz(data: st.DataObject, response_bodies: Any, http: httpx.Client) -> None:
    response = post_json(http, "/v1/responses", data.draw(response_bodies))
    assert_openai_answer(response)


IDS = st.text(alphabet=string.printable + "é²١①/\u2028", max_size=30)
LIMITS = st.text(alphabet="0123456789²¹①١𝟙-+. x", max_size=5) | st.integers().map(str)


@fuzz_settings(80)
@given(response_id=IDS, limit=LIMITS, order=st.text(max_size=5), after=IDS)
def test_stored_response_routes_fuzz(
    response_id: str, limit: str, order: str, after: str, http: httpx.Client
) -> None:
    path = f"/v1/responses/{quote(response_id, safe='')}"
    for method, url, params in (
        ("GET", path, {}),
        ("GET", path + "/input_items", {"limit": limit, "order": order, "after": after}),
        ("DELETE", path, {}),
    ):
        response = http.request(method, url, params=params)
        assert response.status_code in (200, 400, 404), (method, url, response.text)
        assert "location" not in response.headers
        if response.status_code != 200:
            assert_envelope(response)


# ---- legacy completions ----------------------------------------------------------------


@pytest.fixture(scope="module")
def completion_bodies(openai_spec: SpecStrategies) -> Any:
    properties = openai_spec.properties({"$ref": "#/components/schemas/CreateCompletionRequest"})
    return openai_bodies(
        openai_spec,
        "CreateCompletionRequest",
        model=MODELS,
        max_tokens=st.integers(1, 8) | openai_spec.value(properties["max_tokens"]),
    )


@fuzz_settings(100)
@given(data=st.data())
def test_completions_fuzz(data: st.DataObject, completion_bodies: Any, http: httpx.Client) -> None:
    response = post_json(http, "/v1/completions", data.draw(completion_bodies))
    assert_openai_answer(response)


# ---- embeddings (refused on PicoLM: parsing and refusal; computed on llama.cpp) --------


@pytest.fixture(scope="module")
def embedding_bodies(openai_spec: SpecStrategies) -> Any:
    return openai_bodies(openai_spec, "CreateEmbeddingRequest", model=MODELS)


@fuzz_settings(60)
@given(data=st.data())
def test_embeddings_fuzz_picolm(
    data: st.DataObject, embedding_bodies: Any, http: httpx.Client
) -> None:
    response = post_json(http, "/v1/embeddings", data.draw(embedding_bodies))
    assert_openai_answer(response)


@requires_llama
@fuzz_settings(40)
@given(data=st.data())
def test_embeddings_fuzz_llama(
    data: st.DataObject, embedding_bodies: Any, llama_server: RunningServer
) -> None:
    body = data.draw(embedding_bodies)
    if body.get("model") == MODEL_ID:
        body["model"] = "SmolLM2-135M-Instruct"
    response = httpx.post(
        llama_server.base_url + "/v1/embeddings",
        content=json.dumps(body, allow_nan=False),
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert_openai_answer(response)


# ---- Anthropic Messages ----------------------------------------------------------------


@pytest.fixture(scope="module")
def message_bodies() -> Any:
    from anthropic.types import message_create_params
    from pydantic import TypeAdapter

    schema = TypeAdapter(message_create_params.MessageCreateParamsNonStreaming).json_schema()
    spec = SpecStrategies(schema)
    properties = spec.properties(schema)
    fields = {name: spec.value(sub) for name, sub in properties.items()}
    fields["model"] = MODELS
    fields["max_tokens"] = st.integers(1, 8) | spec.value(properties["max_tokens"])
    fields["stream"] = st.booleans() | ANY_JSON
    required = ("model", "max_tokens", "messages")
    return st.fixed_dictionaries(
        {name: fields[name] for name in required},
        optional={
            **{name: value for name, value in fields.items() if name not in required},
            "unknown_field": ANY_JSON,
        },
    )


def assert_anthropic_envelope(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"type", "error", "request_id"}, body
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"} and body["error"]["message"]
    assert body["request_id"] == response.headers["request-id"]


@fuzz_settings(100)
@given(data=st.data())
def test_anthropic_messages_fuzz(
    data: st.DataObject, message_bodies: Any, http: httpx.Client
) -> None:
    response = post_json(http, "/v1/messages", data.draw(message_bodies))
    if response.status_code >= 400:
        assert_anthropic_envelope(response)
        assert response.status_code < 500 or response.status_code in DOCUMENTED_5XX, response.text
    else:
        assert response.status_code == 200
        if response.headers["content-type"].startswith("text/event-stream"):
            assert_sse_json(response)
        else:
            assert response.json()["type"] == "message"


# ---- /tokenize and /detokenize ---------------------------------------------------------

TOKENIZE_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "content": st.text(max_size=60) | ANY_JSON,
        "add_special": st.booleans() | ANY_JSON,
        "parse_special": st.booleans() | ANY_JSON,
        "with_pieces": st.booleans() | ANY_JSON,
        "unknown_field": ANY_JSON,
    },
)
DETOKENIZE_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "tokens": st.lists(st.integers(-5, 40_000) | st.integers(), max_size=8) | ANY_JSON,
        "unknown_field": ANY_JSON,
    },
)


@fuzz_settings(80)
@given(tokenize=TOKENIZE_BODIES, detokenize=DETOKENIZE_BODIES)
def test_tokenizer_routes_fuzz(tokenize: Any, detokenize: Any, http: httpx.Client) -> None:
    assert_well_formed(post_json(http, "/tokenize", tokenize))
    assert_well_formed(post_json(http, "/detokenize", detokenize))


def test_server_alive_after_fuzzing(fuzz_server: PicoLMServer, http: httpx.Client) -> None:
    # Runs after the fuzz tests of this module (pytest keeps file order).
    assert fuzz_server.process.poll() is None
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["running"] == 0
    assert health.json()["response_store"] == "ok"
    reply = http.post("/v1/responses", json={"model": MODEL_ID, "input": "[[reply:ok]]"})
    assert reply.json()["output"][0]["content"][0]["text"] == "ok"
    assert "Traceback" not in fuzz_server.log()
