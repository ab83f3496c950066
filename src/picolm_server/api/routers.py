"""Every wire API's router, in one list the app includes (one line per API)."""

from __future__ import annotations

from fastapi import APIRouter

from .chat.routes import router as chat_router
from .responses.routes import router as responses_router

ROUTERS: tuple[APIRouter, ...] = (
    chat_router,
    responses_router,
)
