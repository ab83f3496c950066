"""Every wire API's router, in one list the app includes (one line per API)."""

from __future__ import annotations

from ..routing import Routes
from .anthropic.routes import router as anthropic_router
from .chat.routes import router as chat_router
from .completions.routes import router as completions_router
from .embeddings.routes import router as embeddings_router
from .responses.routes import router as responses_router
from .tokenize import router as tokenize_router

ROUTERS: tuple[Routes, ...] = (
    chat_router,
    responses_router,
    anthropic_router,
    completions_router,
    embeddings_router,
    tokenize_router,
)
