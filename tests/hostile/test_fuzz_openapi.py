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

from tests.support.openapi import OPENAPI_PATH, requires_spec
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer

pytestmark = requires_spec

CASES = 200
# 5xx the server documents for engine trouble; anything else is a defect.
DOCUMENTED_5XX = {
    500: {"engine_error", "invalid_model_output"},
    503: {"engine_unavailable"},
    504: {"timeout"},
}
# Deep enough to reach message content parts and tool parameters, shallow enough to
# keep each body small.
MAX_DEPTH = 5

FINITE = st.floats(allow_nan=False, allow_infinity=False)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | FINITE | st.text(max_size=20)
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


class SpecStrategies:
    """Hypothesis strategies for schemas of the OpenAPI document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = self.document
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema

    def properties(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Every property of an object schema, through ``allOf``."""
        schema = self.resolve(schema)
        found = dict(schema.get("properties", {}))
        for part in schema.get("allOf", []):
            found.update(self.properties(part))
        return found

    def value(self, schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
        """A value the schema allows (mostly), or another JSON value (sometimes)."""
        hostile = ANY_JSON if depth < MAX_DEPTH else JSON_SCALARS
        return st.one_of(self._typed(schema, depth), self._typed(schema, depth), hostile)

    def _typed(self, schema: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
        schema = self.resolve(schema)
        if depth >= MAX_DEPTH:
            return JSON_SCALARS
        if "enum" in schema:
            return st.sampled_from(schema["enum"])
        if "const" in schema:
            return st.just(schema["const"])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return st.one_of([self._typed(option, depth + 1) for option in schema[key]])
        kind = schema.get("type")
        if isinstance(kind, list):
            return st.one_of([self._typed({**schema, "type": k}, depth) for k in kind])
        if kind == "string":
            return st.text(max_size=40)
        if kind == "integer":
            low, high = schema.get("minimum"), schema.get("maximum")
            in_range = st.integers(min_value=low, max_value=high)
            return in_range | st.integers() if low is None else in_range
        if kind == "number":
            low, high = schema.get("minimum"), schema.get("maximum")
            in_range_number = st.floats(min_value=low, max_value=high, allow_infinity=False)
            return in_range_number.filter(lambda x: x == x) | st.integers(-3, 3)
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        if kind == "array":
            items = schema.get("items", {})
            return st.lists(self._typed(items, depth + 1), max_size=3)
        if kind == "object" or "properties" in schema or "allOf" in schema:
            return self.obj(schema, depth + 1)
        return ANY_JSON

    def obj(self, schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
        properties = self.properties(schema)
        required = set(self.resolve(schema).get("required", []))
        for part in self.resolve(schema).get("allOf", []):
            required |= set(self.resolve(part).get("required", []))
        values = {name: self._typed(sub, depth) for name, sub in properties.items()}
        return st.fixed_dictionaries(
            {name: values[name] for name in properties if name in required},
            optional={name: values[name] for name in properties if name not in required},
        )


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


def assert_envelope(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if response.status_code >= 500:
        assert error["code"] in DOCUMENTED_5XX.get(response.status_code, set()), error


def assert_well_formed(response: httpx.Response) -> None:
    if response.status_code >= 400:
        assert_envelope(response)
        return
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line for line in response.text.split("\n") if line]
        assert all(line.startswith("data: ") for line in events), events
        for line in events[:-1]:
            payload = json.loads(line[len("data: ") :])
            if "error" in payload:
                assert set(payload["error"]) == {"message", "type", "param", "code"}
        assert events[-1] == "data: [DONE]" or "error" in json.loads(events[-1][6:])
    else:
        assert isinstance(response.json(), dict)


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
