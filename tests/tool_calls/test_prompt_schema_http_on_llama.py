"""A schema in the prompt through a running server on the embedded SmolLM2: the real
model's reply is held to each client's schema, and json_object replies end complete and
valid. The wire format (header, log, where it does not apply) is tested in-process in
test_prompt_schema_http.py."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.conftest import requires_llama
from tests.support.server import RunningServer
from tests.tool_calls.test_prompt_schema import CITY
from tests.tool_calls.test_prompt_schema_http import FORMS, HEADER
from tests.tool_calls.test_prompt_schema_http_on_picolm import chat, logged

LLAMA_MODEL = "SmolLM2-135M-Instruct"


@requires_llama
@pytest.mark.llama
@pytest.mark.parametrize("form", list(FORMS))
def test_each_clients_schema_holds_the_reply(llama_server: RunningServer, form: str) -> None:
    response = chat(
        llama_server,
        LLAMA_MODEL,
        FORMS[form],
        response_format={"type": "json_object"},
        temperature=0,
    )
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["message"]["content"]), CITY)
    assert response.headers[HEADER] == "prompt"
    assert logged(llama_server, response).endswith("schema=prompt")


# Requests (prompt and seed, the server's default sampling) that SmolLM2 ran away on until
# max_tokens before json_object replies were made to end (bench/json_replies.py, seeds
# 4, 15 and 17 there).
RUNAWAY_REQUESTS = [
    ("List three fruits and their colours as a JSON object.", 4),
    ("Give me a recipe for pancakes as JSON with ingredients and steps.", 15),
    ("Classify the sentiment of 'This movie was terrible' as JSON.", 17),
]


@requires_llama
@pytest.mark.llama
@pytest.mark.parametrize(("prompt", "seed"), RUNAWAY_REQUESTS)
def test_json_object_replies_end_complete_and_valid(
    llama_server: RunningServer, prompt: str, seed: int
) -> None:
    # The server's default temperature, top_p and max_tokens, as a client of JSON mode
    # sends it.
    response = chat(
        llama_server,
        LLAMA_MODEL,
        [{"role": "user", "content": prompt}],
        response_format={"type": "json_object"},
        seed=seed,
    )
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert isinstance(json.loads(choice["message"]["content"]), dict)
