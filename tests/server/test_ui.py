"""The chat page's route over HTTP, on the app in-process: served at / without a key,
with its content type and security policy, and nothing loaded from elsewhere; and
``server.ui: false``. The page itself runs in Chromium in test_ui_on_picolm.py and
test_ui_on_llama.py."""

from __future__ import annotations

import pytest

from tests.support.inprocess import InProcessServer, serve_in_process

pytestmark = pytest.mark.anyio


async def test_the_page_needs_no_key(app_server: InProcessServer) -> None:
    assert app_server.api_key  # the app has a key; the page is served without it
    response = await app_server.http().get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "connect-src 'self'" in response.headers["content-security-policy"]
    # Nothing is loaded from elsewhere: no URL to another host in the page.
    assert "http://" not in response.text and "https://" not in response.text


async def test_ui_false_turns_it_off() -> None:
    async with serve_in_process(server={"ui": False, "api_key": ""}) as server:
        response = await server.http().get("/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
