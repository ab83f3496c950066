"""The chat page at /, in a real headless Chromium (Debian's ``chromium`` package driven
by Playwright), against real servers; and ``server.ui: false`` over HTTP.

Set ``PICOLM_DOCS_SCREENSHOT=1`` to write ``docs/chat-page.png`` from the SmolLM2 test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_API_KEY
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer
from tests.support.server import RunningServer

CHROMIUM = os.environ.get("PICOLM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "chat-page.png"
# A generous bound for a reply on a busy machine, not a speed requirement.
REPLY_TIMEOUT_MS = 240_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"needs Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    # Playwright starts Chromium with an empty profile directory of its own.
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a context of its own: nothing kept in the browser by another test."""
    context = browser.new_context(viewport={"width": 1000, "height": 720})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"the page's script failed: {errors}"


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


def test_the_page_streams_a_reply(page: Any, picolm_files: PicoLMFiles, tmp_path: Path) -> None:
    # Slow tokens: the reply must be seen growing, not only arriving whole.
    with picolm_files.serve(tmp_path) as server:
        page.goto(server.base_url + "/")
        wait_for_model(page, MODEL_ID)
        page.fill("#prompt", "[[slow:0.3]] [[reply:Bonjour from the stand-in]]")
        page.press("#prompt", "Enter")
        reply = page.locator(".msg.assistant").first
        partial = page.locator(".msg.assistant[data-done=false] .content")
        partial.filter(has_text="Bonjour").wait_for(timeout=REPLY_TIMEOUT_MS)
        assert "Bonjour from the stand-in" not in partial.inner_text()
        reply.and_(page.locator("[data-done=true]")).wait_for(timeout=REPLY_TIMEOUT_MS)
        assert reply.locator(".content").inner_text() == "Bonjour from the stand-in"
        meta = reply.locator(".meta").inner_text()
        assert "first token" in meta and "tokens/s" in meta and "· 4 tokens" in meta  # four words

        # The conversation stays in the browser: a reload shows it again.
        page.reload()
        wait_for_model(page, MODEL_ID)
        assert page.locator(".msg.user .content").inner_text() == (
            "[[slow:0.3]] [[reply:Bonjour from the stand-in]]"
        )
        assert page.locator(".msg.assistant .content").inner_text() == "Bonjour from the stand-in"

        # JSON replies are shown pretty-printed.
        reply = send(page, '[[reply:{"city": "Paris", "days": [1, 2]}]]')
        assert reply.locator("pre.json").inner_text() == (
            '{\n  "city": "Paris",\n  "days": [\n    1,\n    2\n  ]\n}'
        )

        page.click("#new-chat")
        assert page.locator(".msg").count() == 0


def test_the_page_asks_for_the_key(page: Any, picolm_server: PicoLMServer) -> None:
    page.goto(picolm_server.base_url + "/")
    page.locator("#key-form").wait_for(state="visible", timeout=REPLY_TIMEOUT_MS)
    assert "needs an API key" in page.locator("#key-message").inner_text()

    page.fill("#key-input", "sk-wrong")
    page.press("#key-input", "Enter")
    page.locator("#key-message", has_text="refused").wait_for(timeout=REPLY_TIMEOUT_MS)

    page.fill("#key-input", TEST_API_KEY)
    page.press("#key-input", "Enter")
    wait_for_model(page, MODEL_ID)
    assert page.locator("#key-form").is_hidden()
    reply = send(page, "[[reply:Keyed reply]]")
    assert reply.locator(".content").inner_text() == "Keyed reply"

    # The key is kept in the browser: a reload needs no prompt.
    page.reload()
    wait_for_model(page, MODEL_ID)
    assert page.locator("#key-form").is_hidden()
    page.click("#key-button")
    page.click("#key-forget")
    page.locator("#key-form").wait_for(state="visible", timeout=REPLY_TIMEOUT_MS)


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


# ---- server.ui -------------------------------------------------------------------------------


def test_the_page_needs_no_key(picolm_server: PicoLMServer) -> None:
    response = httpx.get(picolm_server.base_url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "connect-src 'self'" in response.headers["content-security-policy"]
    # Nothing is loaded from elsewhere: no URL to another host in the page.
    assert "http://" not in response.text and "https://" not in response.text


def test_ui_false_turns_it_off(picolm_files: PicoLMFiles, tmp_path: Path) -> None:
    with picolm_files.serve(tmp_path, server={"ui": False}) as server:
        response = httpx.get(server.base_url + "/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
