"""The chat page at /, in a real headless Chromium (tests/server/conftest.py) against a
real server driving the PicoLM stand-in: a reply seen streaming, the page asking for the
key. The page's route and headers are in test_ui.py, in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import TEST_API_KEY
from tests.server.chat_page import REPLY_TIMEOUT_MS, send, wait_for_model
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer


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
