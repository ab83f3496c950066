"""Session affinity: which conversation a chat request belongs to, so that a load
balancer in front of several servers keeps sending it to the one that holds its saved
prompt state.

The id is, in order of preference:

1. the ``X-Session-ID`` request header, verbatim;
2. ``prompt_cache_key`` (OpenAI's field for exactly this), as ``key-`` and a hash;
3. ``user`` (its older stand-in), as ``user-`` and a hash;
4. ``chat-`` and a hash of the first system (or developer) message and the first user
   message, which stay the same on every turn of a conversation.

The server returns it in the ``X-Session-ID`` response header, so a client can send it
back. ``deploy/nginx/picolm-session.js`` computes the same id from the request body for
nginx; the two must stay in step (the load-balancer tests compare them).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the chat types load with the first chat request (api/routers.py)
    from ..api.chat.types import ChatCompletionRequest, ChatMessage

SESSION_HEADER = "X-Session-ID"
# 128 bits of SHA-256: collisions only ever put two conversations on the same server.
_HASH_CHARS = 32


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]


def _text(message: ChatMessage | None) -> str:
    """The message's text as the balancer sees it: text parts joined with newlines,
    anything else left out (this only has to be stable, not complete)."""
    if message is None or message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    return "\n".join(part.text for part in message.content if part.type == "text" and part.text)


def session_id(request: ChatCompletionRequest, header: str | None) -> str:
    if header and header.strip():
        return header.strip()
    extra = request.model_extra or {}
    cache_key = extra.get("prompt_cache_key")
    if isinstance(cache_key, str) and cache_key:
        return "key-" + _digest(cache_key)
    if request.user:
        return "user-" + _digest(request.user)
    system = next((m for m in request.messages if m.role in ("system", "developer")), None)
    first_user = next((m for m in request.messages if m.role == "user"), None)
    return "chat-" + _digest(_text(system) + "\x00" + _text(first_user))
