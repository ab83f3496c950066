"""Pure conversions for ``/v1/embeddings``: the request's ``input`` to a list of inputs,
``dimensions`` checked against the vectors, vectors to the wire (floats or base64)."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence

from ...engines.base import EmbeddingInput, Embeddings
from ...errors import InvalidRequestError
from .types import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage

# OpenAI's bound on the inputs of one request.
MAX_INPUTS = 2048


def embedding_inputs(
    value: str | list[str] | list[int] | list[list[int]],
) -> list[EmbeddingInput]:
    """The inputs of a request: one string, strings, one token array or token arrays."""
    if isinstance(value, str):
        inputs: list[EmbeddingInput] = [value]
    elif not value:
        raise InvalidRequestError(
            "'input' must not be an empty array.", param="input", code="invalid_value"
        )
    elif all(isinstance(item, str) for item in value):
        inputs = [item for item in value if isinstance(item, str)]
    elif all(isinstance(item, int) for item in value):
        inputs = [tuple(item for item in value if isinstance(item, int))]
    else:
        inputs = [tuple(item) for item in value if isinstance(item, list)]
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequestError(
            f"'input' holds {len(inputs)} inputs; at most {MAX_INPUTS} are allowed in one request.",
            param="input",
            code="invalid_value",
        )
    for index, item in enumerate(inputs):
        if len(item) == 0:
            where = "input" if len(inputs) == 1 else f"input[{index}]"
            raise InvalidRequestError(
                f"'{where}' is empty; an input to embed needs at least one token.",
                param=where,
                code="invalid_value",
            )
    return inputs


def refuse_dimensions(request: EmbeddingRequest, native: int) -> None:
    """``dimensions`` can only be the model's own: its vectors are not trained to be cut
    shorter (as OpenAI's text-embedding-3 models are)."""
    if request.dimensions is None or request.dimensions == native:
        return
    raise InvalidRequestError(
        f"dimensions={request.dimensions} cannot be honoured: this model's embeddings have "
        f"{native} dimensions and cannot be shortened or lengthened.",
        param="dimensions",
        code="invalid_value",
    )


def base64_floats(vector: Sequence[float]) -> str:
    """The vector as OpenAI's ``encoding_format: base64``: little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embedding_list(result: Embeddings, model: str, encoding_format: str) -> EmbeddingList:
    data = [
        Embedding(
            index=index,
            embedding=base64_floats(vector) if encoding_format == "base64" else list(vector),
        )
        for index, vector in enumerate(result.vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    return EmbeddingList(data=data, model=model, usage=usage)
