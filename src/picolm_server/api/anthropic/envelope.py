"""The middleware that puts every error answer on the Messages routes in Anthropic's
envelope (:mod:`.errors` says how), with the request's id in it, and sends that id in
Anthropic's ``request-id`` header too (its SDK reads ``APIError.request_id`` there). It is
part of every app, so it imports nothing of the Messages API until it rewrites an answer:
the API's models load with its first request (api/routers.py)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...observability.request_log import request_id_of

MESSAGES_PATH = "/v1/messages"


def is_messages_path(path: str) -> bool:
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


class AnthropicErrorMiddleware:
    """On the Messages routes, an error answer in OpenAI's envelope becomes Anthropic's.

    It sits inside the request log and CORS and outside every middleware that answers
    with an error (key, body size, body time, drain, unexpected exceptions)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_messages_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        held: Message | None = None
        chunks: list[bytes] = []
        request_id = request_id_of(scope)

        async def rewrite(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                if request_id is not None:
                    id_header = (b"request-id", request_id.encode("ascii"))
                    message = {**message, "headers": [*message.get("headers", []), id_header]}
                if message["status"] >= 400 and _is_json(message):
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = b"".join(chunks)
                # Imported here, with the first error answer on these paths (module doc).
                from .errors import anthropic_error_body

                new_body = anthropic_error_body(body, held["status"], request_id) or body
                headers = [
                    (name, value) for name, value in held["headers"] if name != b"content-length"
                ]
                headers.append((b"content-length", str(len(new_body)).encode()))
                await send({**held, "headers": headers})
                await send({"type": "http.response.body", "body": new_body})
                return
            await send(message)

        await self.app(scope, receive, rewrite)


def _is_json(message: Message) -> bool:
    for name, value in message.get("headers", []):
        if name.lower() == b"content-type":
            return bool(value.startswith(b"application/json"))
    return False
