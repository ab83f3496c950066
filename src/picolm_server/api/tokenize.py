"""``POST /tokenize`` and ``POST /detokenize`` in llama-server's shape, with the engine's
exact tokenizer (through the core, which refuses them where the engine has none).

``{"content": "...", "add_special": false, "parse_special": true, "with_pieces": false}``
gives ``{"tokens": [ids]}``, or with pieces ``{"tokens": [{"id": 1, "piece": "..."}]}``;
``{"tokens": [ids]}`` gives ``{"content": "..."}``. An id outside the vocabulary is a 400.

The core admits the work one request at a time and refuses a text of more than
``MAX_TOKENIZE_TOKENS`` tokens, so the reply is bounded too: with pieces, it is written
as JSON text one token at a time (each distinct token's entry made once), never as a
list of objects, which took about 250 bytes of memory per token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request

from ..engines.base import Engine
from ..http.requests import core_of, parse_request
from ..http.responses import JSONResponse, JSONText
from ..http.route_table import Routes

router = Routes()


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    content: str
    # The model whose tokenizer to use (llama-server's route has one model; here the
    # shelf's default when it is left out).
    model: str | None = None
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    tokens: list[int]
    model: str | None = None


def piece_value(piece: bytes) -> str | list[int]:
    """A token's text as llama-server writes it: a string when it is whole UTF-8, else
    its byte values (a byte token, or part of a character)."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


def pieces_json(engine: Engine, tokens: Sequence[int]) -> JSONText:
    """``{"tokens": [{"id", "piece"}, ...]}``: each token with its own text, as
    llama-server's ``with_pieces`` gives them."""
    entries: dict[int, str] = {}
    parts: list[str] = []
    for token in tokens:
        entry = entries.get(token)
        if entry is None:
            piece = json.dumps(piece_value(engine.token_piece(token)), ensure_ascii=False)
            entry = entries[token] = f'{{"id":{token},"piece":{piece}}}'
        parts.append(entry)
    return JSONText('{"tokens":[' + ",".join(parts) + "]}")


@router.post("/tokenize")
async def tokenize(request: Request) -> JSONResponse:
    parsed = await parse_request(request, TokenizeRequest)
    core = core_of(request).model(parsed.model or "")
    tokens = await core.tokenize(
        parsed.content,
        add_special=parsed.add_special,
        parse_special=parsed.parse_special,
        param="content",
    )
    if not parsed.with_pieces:
        return JSONResponse({"tokens": tokens})
    # Written in the tokenizer's worker thread: JSON text, rendered as it is.
    return JSONResponse(await core.tokenizer_job(lambda engine: pieces_json(engine, tokens)))


@router.post("/detokenize")
async def detokenize(request: Request) -> JSONResponse:
    parsed = await parse_request(request, DetokenizeRequest)
    core = core_of(request).model(parsed.model or "")
    return JSONResponse({"content": await core.detokenize(parsed.tokens)})
