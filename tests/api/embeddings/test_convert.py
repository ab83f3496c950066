"""Embedding inputs, ``dimensions`` and the wire encodings, without HTTP."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from picolm_server.api.embeddings.convert import (
    MAX_INPUTS,
    base64_floats,
    embedding_inputs,
    embedding_list,
    refuse_dimensions,
)
from picolm_server.api.embeddings.types import EmbeddingRequest
from picolm_server.engines.base import Embeddings
from picolm_server.errors import InvalidRequestError
from tests.support.openapi import check_schema, requires_spec


def decode(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_the_four_input_forms() -> None:
    assert embedding_inputs("a") == ["a"]
    assert embedding_inputs(["a", "b"]) == ["a", "b"]
    assert embedding_inputs([1, 2, 3]) == [(1, 2, 3)]
    assert embedding_inputs([[1, 2], [3]]) == [(1, 2), (3,)]


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ("", "input"),
        ([], "input"),
        (["a", ""], "input[1]"),
        ([[1], []], "input[1]"),
        (["x"] * (MAX_INPUTS + 1), "input"),
    ],
)
def test_bad_inputs_are_400s_naming_them(value: Any, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        embedding_inputs(value)
    assert caught.value.param == param


@pytest.mark.parametrize("value", [[1, "a"], [[1], "a"], [1.5], [True]])
def test_mixed_inputs_are_not_a_valid_request(value: Any) -> None:
    with pytest.raises(ValueError):
        EmbeddingRequest.model_validate({"model": "m", "input": value})


def test_dimensions_only_when_they_are_the_models_own() -> None:
    refuse_dimensions(EmbeddingRequest(model="m", input="a"), 576)
    refuse_dimensions(EmbeddingRequest(model="m", input="a", dimensions=576), 576)
    with pytest.raises(InvalidRequestError) as caught:
        refuse_dimensions(EmbeddingRequest(model="m", input="a", dimensions=256), 576)
    assert caught.value.param == "dimensions"
    assert "576" in caught.value.message


def test_base64_is_little_endian_float32() -> None:
    vector = (0.5, -0.25, 1.0)
    raw = base64.b64decode(base64_floats(vector))
    assert raw == struct.pack("<3f", *vector)
    assert raw[:4] == b"\x00\x00\x00\x3f"  # 0.5, least significant byte first


@requires_spec
@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_the_response_is_openais_shape(encoding: str) -> None:
    result = Embeddings(((0.6, 0.8), (1.0, 0.0)), prompt_tokens=7)
    body = embedding_list(result, "m", encoding).model_dump(mode="json")
    if encoding == "base64":
        # The spec only describes float arrays; base64 replaces each array by its bytes.
        decoded = [decode(item["embedding"]) for item in body["data"]]
        assert decoded == [
            list(struct.unpack("<2f", struct.pack("<2f", *v))) for v in result.vectors
        ]
        check_schema(
            {
                **body,
                "data": [
                    {**item, "embedding": vector}
                    for item, vector in zip(body["data"], decoded, strict=True)
                ],
            },
            "CreateEmbeddingResponse",
        )
    else:
        check_schema(body, "CreateEmbeddingResponse")
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [item["index"] for item in body["data"]] == [0, 1]
    if encoding == "float":
        assert body["data"][0]["embedding"] == [0.6, 0.8]
