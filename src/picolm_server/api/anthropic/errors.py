"""A Messages request's validation errors as Anthropic words them
(``messages.0.content.1.type: ...``).

The envelope of every error on these paths (``{"type": "error", "error": {"type",
"message"}, "request_id"}``) is written by http/errors.py, which the app's error
answers and a started stream's ``error`` event share.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import ValidationError

from ...errors import InvalidRequestError
from .types import SUPPORTED_BLOCK_TYPES


def _location(parts: tuple[int | str, ...]) -> Iterator[str]:
    # pydantic adds the union member it tried (``str``, ``list[...]``, a tag such as
    # ``text``) to an error's location; only field names and list indexes are kept.
    tags = {"str", "int", "float", "bool", "dict", "list", "none", *SUPPORTED_BLOCK_TYPES}
    tags |= {"auto", "any", "tool"}
    for part in parts:
        if isinstance(part, int):
            yield str(part)
        elif part not in tags and "[" not in part and "-" not in part:
            yield part


def validation_error(exc: ValidationError) -> InvalidRequestError:
    """A pydantic error as Anthropic words one: ``messages.0.content.1.type: ...``."""
    errors = exc.errors()
    for error in errors:
        # Content given as blocks fails as a string too: the block's own error says more.
        path = ".".join(_location(tuple(error["loc"])))
        context: dict[str, Any] = dict(error.get("ctx") or {})
        if error["type"] == "union_tag_invalid" and ".content" in f".{path}":
            return unsupported_block(path, str(context.get("tag")))
        if error["type"] == "literal_error" and _is_block(path):
            return unsupported_block(path.rsplit(".", 1)[0], str(error.get("input")))
    error = next((e for e in errors if "str" not in e["loc"]), errors[0])
    path = ".".join(_location(tuple(error["loc"])))
    kind = error["type"]
    context = dict(error.get("ctx") or {})
    if kind == "missing":
        return InvalidRequestError(f"{path}: Field required", param=path)
    if kind == "union_tag_invalid":
        message = (
            f"{path}: type {context.get('tag')!r} is not one of {context.get('expected_tags')}"
        )
        return InvalidRequestError(message, param=path)
    return InvalidRequestError(f"{path}: {error['msg']}" if path else error["msg"], param=path)


def _is_block(path: str) -> bool:
    """A ``type`` inside a list of content blocks (``...content.2.type``)."""
    parts = path.split(".")
    return len(parts) >= 3 and parts[-1] == "type" and parts[-2].isdigit() and "content" in parts


def unsupported_block(path: str, block_type: str) -> InvalidRequestError:
    supported = ", ".join(SUPPORTED_BLOCK_TYPES)
    return InvalidRequestError(
        f"{path}: content blocks of type {block_type!r} are not supported by this server "
        f"(it takes {supported}).",
        param=path,
    )
