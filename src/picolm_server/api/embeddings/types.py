"""The ``/v1/embeddings`` request as clients send it and the response as OpenAI shapes it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EmbeddingRequest(BaseModel):
    # Strict like the other requests; unknown fields are accepted (clients send new ones).
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = ""  # left out: the server's default model
    # A string, strings, a token array or token arrays: see convert.embedding_inputs.
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Embedding(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    # base64: the little-endian float32 bytes of the vector, as OpenAI sends them.
    embedding: list[float] | str


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Response):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
