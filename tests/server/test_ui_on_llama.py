"""The chat page at /, in a real headless Chromium (tests/server/conftest.py) against the
embedded SmolLM2 on llama.cpp: a tool call drawn, and a real model's reply.

Set ``PICOLM_DOCS_SCREENSHOT=1`` to write ``docs/chat-page.png`` from the SmolLM2 test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.server.chat_page import send, wait_for_model
from tests.support.server import RunningServer

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "chat-page.png"


def test_the_page_renders_tool_calls(page: Any, llama_server: RunningServer) -> None:
    """SmolLM2 through llama.cpp, with a tool it is required to call: the call is drawn
    with its name and pretty-printed arguments."""
    page.goto(llama_server.base_url + "/")
    wait_for_model(page, "SmolLM2-135M-Instruct")
    page.click("#options summary")
    tools = (
        '[{"type": "function", "function": {"name": "get_weather", "parameters": '
        '{"type": "object", "properties": {"city": {"type": "string"}}, '
        '"required": ["city"]}}}]'
    )
    page.fill("#tools", tools)
    page.fill("#temperature", "0")
    page.select_option("#tool-choice", "required")
    reply = send(page, "What is the weather in Paris?")
    call = reply.locator(".tool-call")
    assert call.count() == 1
    assert call.locator(".name").inner_text().endswith("get_weather")
    arguments = call.locator("pre").inner_text()
    assert arguments.startswith("{\n") and '"city"' in arguments


def test_a_real_model_in_the_page(page: Any, llama_server: RunningServer) -> None:
    """The embedded SmolLM2 answering in the page (the screenshot in the docs)."""
    page.goto(llama_server.base_url + "/")
    wait_for_model(page, "SmolLM2-135M-Instruct")
    page.click("#options summary")
    page.fill("#system", "You are a helpful assistant.")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "40")
    page.click("#options summary")  # closed again, for the screenshot
    reply = send(page, "Write a haiku about a small computer.")
    assert reply.locator(".content").inner_text().strip()
    meta = reply.locator(".meta").inner_text()
    assert "first token" in meta and "tokens/s" in meta
    if os.environ.get("PICOLM_DOCS_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))
