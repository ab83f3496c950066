"""HTTP routes shared by every API (models, health) and the helpers their handlers use:
body parsing, validation errors, the client-disconnect guard, the generation core.

pydantic (the request and model-list types) is imported by the handlers that use it,
not with this module: the server answers ``/health`` before it has loaded it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import InvalidRequestError, ModelNotFoundError
from ..generation import GenerationCore
from .json_text import escape_line_separators
from .route_table import Routes

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

    from ..api.model_types import Model

T = TypeVar("T")
RequestT = TypeVar("RequestT", bound="BaseModel")

router = Routes()


def core_of(request: Request) -> GenerationCore:
    """The generation core serving this app."""
    core: GenerationCore = request.app.state.core
    return core


# pydantic names the member of a union it tried (``str``, ``list[str]``,
# ``literal['a']``, ...) in an error's location; those are not fields. Compared whole:
# "stream" and "strict" are fields.
_UNION_MEMBER_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _param_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _UNION_MEMBER_TAGS and "[" not in part:
            path += f".{part}" if path else part
    return path


def validation_error(exc: ValidationError) -> InvalidRequestError:
    error = exc.errors()[0]
    param = _param_path(tuple(error["loc"]))
    message = error["msg"]
    if error["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {message}."
    return InvalidRequestError(message, param=param or None, code="invalid_value")


async def parse_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except RecursionError:
        raise InvalidRequestError("The JSON body of your request is nested too deeply.") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. The body must be valid JSON "
            "(Content-Type: application/json).",
        ) from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    if (b"\\ud" in raw or b"\\uD" in raw) and _has_lone_surrogate(body):
        raise InvalidRequestError(
            "The request body contains invalid Unicode: a \\u escape of half a surrogate "
            "pair, which stands for no character."
        )
    return body


async def parse_request(
    request: Request,
    kind: type[RequestT],
    invalid: Callable[[ValidationError], InvalidRequestError] | None = None,
) -> RequestT:
    """The body as ``kind``: JSON errors as :func:`parse_body` words them, validation
    errors by ``invalid`` (an API's own wording; OpenAI's :func:`validation_error` when
    None)."""
    from pydantic import ValidationError

    body = await parse_body(request)
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        raise (invalid or validation_error)(exc) from None


def _has_lone_surrogate(body: dict[str, Any]) -> bool:
    """JSON allows escapes like "\\ud800" that decode to no character; no engine can be
    given such text. Only looked for when the body has such an escape at all."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class ClientDisconnected(Exception):
    """The client went away before the answer was ready; there is nobody to answer."""


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``, cancelling it if the client goes away first.

    The body has been read, so the next ASGI message can only be the disconnect.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnected
    return task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _model(service: GenerationCore) -> Model:
    from ..api.model_types import Model

    info = service.engine.model
    return Model(id=info.id, created=info.created, owned_by=info.owned_by)


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    from ..api.model_types import ModelList

    models = ModelList(data=[_model(core_of(request))])
    return Response(escape_line_separators(models.model_dump_json()), media_type="application/json")


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> Response:
    service = core_of(request)
    if model_id != service.model_id:
        raise ModelNotFoundError(model_id)
    json_text = escape_line_separators(_model(service).model_dump_json())
    return Response(json_text, media_type="application/json")


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    service = core_of(request)
    state = service.engine.health()
    body = {
        "status": "ok" if state.ok else "unavailable",
        "engine": state.detail,
        "model": service.model_id,
        "running": service.scheduler.running,
        "queued": service.scheduler.queued,
        # Shown, not a 503: everything but stored responses still works without it.
        "response_store": request.app.state.response_store.status,
    }
    return JSONResponse(body, status_code=200 if state.ok else 503)
