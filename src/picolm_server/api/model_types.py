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


class ModelList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    object: Literal["list"] = "list"
    data: list[Model]
