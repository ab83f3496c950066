"""OpenAI's model objects, for ``GET /v1/models``: apart from the chat-completion types
(:mod:`.protocol`), which are imported with the first chat request (api/routers.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # The shelf's fields (extra to OpenAI's, which clients ignore).
    engine: str
    engine_reason: str
    loaded: bool
    size_bytes: int
    memory_bytes: int
    aliases: list[str]
    chat_template: str | None
    # Why it cannot load, when known without loading it (a missing file); else null.
    problem: str | None = None


class ModelList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object: Literal["list"] = "list"
    data: list[Model]
