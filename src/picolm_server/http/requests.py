"""Request plumbing every route uses: the generation core serving the app, the body
parsed into the route's request model (with OpenAI's wording of a validation error, or
the API's own), :func:`accept` (parse, record the model asked for, check it: the
preamble of every generating route), and the guard that stops work for a client that
has gone.

pydantic is imported with the first request that is parsed, not with this module: the
server answers ``/health`` before it has loaded it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from starlette.requests import Request

from ..errors import InvalidRequestError
from ..generation import GenerationCore, ModelCore
from ..observability.observation import GenerationObserver
from ..observability.request_log import observer_of

if TYPE_CHECKING:
    from pydantic import ValidationError
    from typing_extensions import Self


class RequestModel(Protocol):
    """A request body's model (a pydantic model)."""

    @classmethod
    def model_validate(cls, obj: Any) -> Self: ...


class ModelRequest(RequestModel, Protocol):
    """A request that names the model it is for."""

    @property
    def model(self) -> str: ...


T = TypeVar("T")
RequestT = TypeVar("RequestT", bound=RequestModel)
ModelRequestT = TypeVar("ModelRequestT", bound=ModelRequest)


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


async def accept(
    request: Request,
    kind: type[ModelRequestT],
    invalid: Callable[[ValidationError], InvalidRequestError] | None = None,
) -> tuple[ModelRequestT, ModelCore, GenerationObserver]:
    """The preamble of every route that serves a model: the body parsed as ``kind``
    (:func:`parse_request`), then the core accepts its model
    (:meth:`~picolm_server.generation.GenerationCore.accept`). Returns the request,
    the core bound to its model, and the request's observer."""
    parsed = await parse_request(request, kind, invalid)
    observer = observer_of(request.scope)
    core = core_of(request).accept(parsed.model, observer)
    return parsed, core, observer


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
