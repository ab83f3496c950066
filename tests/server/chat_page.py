"""What the chat page's browser tests do in the page: send a message and wait for the
reply, wait for a model to be offered."""

from __future__ import annotations

from typing import Any

# A generous bound for a reply on a busy machine, not a speed requirement.
REPLY_TIMEOUT_MS = 240_000


def send(page: Any, text: str) -> Any:
    """Type a message, send it, and return the reply's element once it is complete."""
    before = page.locator(".msg.assistant").count()
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    reply = page.locator(".msg.assistant").nth(before)
    reply.and_(page.locator("[data-done=true]")).wait_for(timeout=REPLY_TIMEOUT_MS)
    return reply


def wait_for_model(page: Any, model: str) -> None:
    page.wait_for_function(
        "model => [...document.querySelectorAll('#model option')].some(o => o.value === model)",
        arg=model,
        timeout=REPLY_TIMEOUT_MS,
    )
