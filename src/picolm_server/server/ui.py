"""The chat page at ``/``: one static HTML file shipped in the package (no build step,
nothing fetched from elsewhere). It talks to the API like any other client; turned off
with ``server.ui: false``."""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from ..http.route_table import Routes

CHAT_PAGE_PATH = "/"

# The page's script and style are inline and it calls only this server.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = Routes()


@cache
def chat_page() -> bytes:
    return resources.files(__package__).joinpath("static/chat.html").read_bytes()


@router.get(CHAT_PAGE_PATH)
async def chat(_: Request) -> Response:
    return Response(chat_page(), media_type="text/html; charset=utf-8", headers=_SECURITY_HEADERS)
