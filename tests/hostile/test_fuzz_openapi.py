"""Property-based fuzzing of the endpoints the server has, with requests drawn from
OpenAI's own OpenAPI description (``../shared/openai-openapi/openapi.json``; skipped when
it is absent), against a server on the PicoLM stand-in.

Each request body is built from ``CreateChatCompletionRequest``: every property the spec
names, with values of the declared type and range (enums, nested objects and arrays
followed through ``$ref``, ``anyOf``/``oneOf`` and ``allOf``) or, often, a hostile value
of another type; unknown fields too. The model is mostly the served one, so the
requests get past the model check and into the engine. The properties: no 5xx but the
documented engine ones, every error in OpenAI's envelope, every stream made of JSON
events (and ``[DONE]``), and the server alive after.

Schema-driven generation (rather than schemathesis, which walks the same spec but takes
seconds per chat request on a small machine) keeps a few hundred cases within CI time.
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

from tests.support.fuzzing import ANY_JSON, SpecStrategies, assert_envelope, assert_well_formed
from tests.support.openapi import OPENAPI_PATH, requires_spec
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer

pytestmark = requires_spec

CASES = 200


@pytest.fixture(scope="module")
def spec() -> SpecStrategies:
    return SpecStrategies(json.loads(OPENAPI_PATH.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def fuzz_server(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    workdir = tmp_path_factory.mktemp("fuzz")
    with picolm_files.serve(workdir, picolm={"max_tokens": 8}) as server:
        yield server


@pytest.fixture(scope="module")
def bodies(spec: SpecStrategies) -> st.SearchStrategy[dict[str, Any]]:
    # Built once: the strategy tree for the whole request is large.
    return chat_bodies(spec)


@pytest.fixture(scope="module")
def http(fuzz_server: PicoLMServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.base_url, timeout=60) as client:
        yield client


def chat_bodies(spec: SpecStrategies) -> st.SearchStrategy[dict[str, Any]]:
    request = "#/components/schemas/CreateChatCompletionRequest"
    properties = spec.properties({"$ref": request})
    fields = {name: spec.value(sub) for name, sub in properties.items() if name != "messages"}
    message = spec.value({"$ref": "#/components/schemas/ChatCompletionRequestMessage"}, 1)
    # Mostly the served model, so that the request reaches the engine.
    fields["model"] = st.sampled_from([MODEL_ID, MODEL_ID, MODEL_ID]) | st.text(max_size=10)
    # Short replies keep each case fast; large and odd values are drawn as well.
    fields["max_tokens"] = st.integers(1, 8) | spec.value(properties["max_tokens"])
    return st.fixed_dictionaries(
        {
            "messages": st.lists(message, min_size=1, max_size=3) | ANY_JSON,
            "model": fields["model"],
        },
        optional={
            **{name: value for name, value in fields.items() if name != "model"},
            "unknown_field": ANY_JSON,
        },
    )


@settings(
    max_examples=CASES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_chat_completions_fuzz(
    data: st.DataObject, bodies: st.SearchStrategy[dict[str, Any]], http: httpx.Client
) -> None:
    body = data.draw(bodies)
    response = http.post(
        "/v1/chat/completions",
        content=json.dumps(body, allow_nan=False),
        headers={"Content-Type": "application/json"},
    )
    assert_well_formed(response)


MODEL_IDS = st.text(alphabet=string.printable + "é\u2028/", max_size=30)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(model_id=MODEL_IDS | st.just(MODEL_ID))
def test_models_fuzz(model_id: str, http: httpx.Client) -> None:
    response = http.get(f"/v1/models/{quote(model_id, safe='')}")
    assert response.status_code in (200, 404), response.text
    if response.status_code == 404:
        assert_envelope(response)
    else:
        assert response.json()["id"] == MODEL_ID
    listing = http.get("/v1/models")
    assert listing.status_code == 200 and listing.json()["data"][0]["id"] == MODEL_ID


def test_server_alive_after_fuzzing(fuzz_server: PicoLMServer, http: httpx.Client) -> None:
    # Runs after the fuzz tests of this module (pytest keeps file order).
    assert fuzz_server.process.poll() is None
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["running"] == 0
    reply = http.post(
        "/v1/chat/completions",
        json={"model": MODEL_ID, "messages": [{"role": "user", "content": "[[reply:ok]]"}]},
    )
    assert reply.json()["choices"][0]["message"]["content"] == "ok"
    assert "Traceback" not in fuzz_server.log()
