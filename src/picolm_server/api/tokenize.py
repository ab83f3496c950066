"""``POST /tokenize`` and ``POST /detokenize`` in llama-server's shape, with the engine's
exact tokenizer (through the core, which refuses them where the engine has none).

``{"content": "...", "add_special": false, "parse_special": true, "with_pieces": false}``
gives ``{"tokens": [ids]}``, or with pieces ``{"tokens": [{"id": 1, "piece": "..."}]}``;
``{"tokens": [ids]}`` gives ``{"content": "..."}``. An id outside the vocabulary is a 400.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import Response

from ..engines.base import Engine
from ..json_text import escape_line_separators
from ..routes import core_of, parse_request
from ..routing import Routes

router = Routes()


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    tokens: list[int]


def piece_value(piece: bytes) -> str | list[int]:
    """A token's text as llama-server writes it: a string when it is whole UTF-8, else
    its byte values (a byte token, or part of a character)."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


def pieces(engine: Engine, tokens: Sequence[int]) -> list[dict[str, Any]]:
    """Each token with its own text, as llama-server's ``with_pieces`` gives them."""
    return [{"id": token, "piece": piece_value(engine.token_piece(token))} for token in tokens]


def _json(body: dict[str, Any]) -> Response:
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return Response(escape_line_separators(text), media_type="application/json")


@router.post("/tokenize")
async def tokenize(request: Request) -> Response:
    parsed = await parse_request(request, TokenizeRequest)
    core = core_of(request)
    tokens = await core.tokenize(
        parsed.content, add_special=parsed.add_special, parse_special=parsed.parse_special
    )
    if not parsed.with_pieces:
        return _json({"tokens": tokens})
    return _json({"tokens": await asyncio.to_thread(pieces, core.engine, tokens)})


@router.post("/detokenize")
async def detokenize(request: Request) -> Response:
    parsed = await parse_request(request, DetokenizeRequest)
    return _json({"content": await core_of(request).detokenize(parsed.tokens)})
