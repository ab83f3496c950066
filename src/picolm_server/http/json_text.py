"""JSON text that survives clients which split lines on more than ``\\n``.

JSON lets U+2028, U+2029 and U+0085 stand unescaped inside strings, but Python's
``str.splitlines`` (and some JavaScript line readers) break lines there, so a streamed
event carrying one arrives in two halves that are not JSON. Every JSON document the
server sends has them written as ``\\u`` escapes: the same JSON value, on one line.

It also reads the JSON text that clients send inside string fields (tool-call
arguments), where the parser's own failures must become the client's 400.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidRequestError

_ESCAPES = (("\u2028", "\\u2028"), ("\u2029", "\\u2029"), ("\u0085", "\\u0085"))


def escape_line_separators(json_text: str) -> str:
    """``json_text`` with the three characters escaped. Outside strings JSON is ASCII,
    so each one found is inside a string, where its escape means the same."""
    for char, escape in _ESCAPES:
        if char in json_text:
            json_text = json_text.replace(char, escape)
    return json_text


def call_arguments(arguments: str, param: str) -> Any:
    """A client's tool-call arguments as an object when they are JSON (chat templates
    expect one), else the text as sent. JSON nested beyond the parser's recursion limit
    is a 400 naming ``param``: the parser raises RecursionError, not ValueError."""
    try:
        return json.loads(arguments)
    except RecursionError:
        raise InvalidRequestError(
            f"Invalid value for '{param}': the JSON is nested too deeply.",
            param=param,
            code="invalid_value",
        ) from None
    except ValueError:
        return arguments
