"""A JSON Schema written into the prompt, taken as the reply's schema.

Several clients never send a schema in ``response_format``: they ask for ``json_object``
(or for nothing) and write the schema into a message, each in its own words:

- instructor (``Mode.JSON``, ``Mode.MD_JSON``): the system message gets "...provide the
  parsed objects in json that match the following json_schema:" and the schema as
  indented JSON; ``MD_JSON`` sends no ``response_format`` and adds a user message
  "Return the correct JSON response within a \\`\\`\\`json codeblock. not the JSON_SCHEMA".
- pydantic-ai (``PromptedOutput``): "Always respond with a JSON object that's compatible
  with this schema:" and the schema as compact JSON, in the instructions.
- The AI SDK (``generateObject`` with a provider without structured outputs, AI SDK 4):
  "JSON schema:", the compact schema, "You MUST answer with a JSON object that matches the
  JSON schema above." at the end of the system message.
- LiteLLM (its fallback for providers without a schema parameter): a user message "Use
  this JSON schema: \\`\\`\\`json {...} \\`\\`\\`".

A small model reads such a prompt poorly (it echoes the schema, or writes a value of the
wrong type), while the server can hold the reply to the schema exactly. So when a
request asks for JSON and its system and user messages hold exactly one JSON Schema of an
object, that schema is the reply's, as if it had come in ``response_format``. Several
different schemas, or none: nothing changes. A schema here is a JSON object with
``"type": "object"`` and ``properties``, or one with ``$defs`` / ``definitions`` and a
``$ref`` into them (pydantic's form for a model that refers to itself); one the server
would refuse in ``response_format`` is not taken (never a 400 for a prompt).

Assistant and tool turns are not read: a model that echoed the schema (which is what
clients retry after) would otherwise make a second candidate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config.settings import PromptSchemaSetting
from ..errors import InvalidRequestError
from .schemas import check_client_schema

# The most prompt text looked at, and the most characters the JSON decoder may read in
# all while trying each brace: a prompt full of braces that never close (each try reading
# to its end) costs a bounded amount of work.
MAX_SCANNED_CHARS = 200_000
MAX_DECODED_CHARS = 1_000_000

# A JSON object's start: a brace and (after whitespace) a key's quote or the closing brace.
_OBJECT_START = re.compile(r'\{\s*["}]')
# "```json" that asks for a fenced reply: not followed by the JSON itself (LiteLLM fences
# the schema it shows; instructor's MD_JSON asks for "a ```json codeblock").
_FENCE_REQUEST = re.compile(r"```json(?!\s*[{\[])", re.IGNORECASE)

FENCE_OPEN = "```json\n"
FENCE_CLOSE = "\n```"


@dataclass(frozen=True)
class PromptSchema:
    """The reply's schema, found in the prompt; ``fenced``: the reply is written as a
    \\`\\`\\`json fenced block (the client asked for one)."""

    schema: dict[str, Any]
    fenced: bool = False


def is_object_schema(value: Any) -> bool:
    """A JSON Schema of an object, as clients write one into a prompt."""
    if not isinstance(value, dict):
        return False
    if value.get("type") == "object" and isinstance(value.get("properties"), dict):
        return True
    definitions = value.get("$defs", value.get("definitions"))
    reference = value.get("$ref")
    return (
        isinstance(definitions, dict)
        and isinstance(reference, str)
        and reference.startswith(("#/$defs/", "#/definitions/"))
    )


def _objects(text: str) -> Iterable[Any]:
    """Every top-level JSON object in ``text`` (one inside another is part of it)."""
    decoder = json.JSONDecoder()
    decoded = 0
    position = 0
    while decoded < MAX_DECODED_CHARS:
        match = _OBJECT_START.search(text, position)
        if match is None:
            return
        start = match.start()
        try:
            value, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError as error:
            decoded += error.pos - start + 1
            position = start + 1
            continue
        except RecursionError:  # nesting deeper than the decoder goes
            return
        decoded += end - start
        yield value
        position = end


def _texts(messages: Iterable[Mapping[str, Any]]) -> list[str]:
    """The text of the system and user messages, the first ``MAX_SCANNED_CHARS`` of it."""
    texts: list[str] = []
    left = MAX_SCANNED_CHARS
    for message in messages:
        if message.get("role") not in ("system", "user"):
            continue
        content = message.get("content")
        if isinstance(content, str) and content and left > 0:
            texts.append(content[:left])
            left -= len(texts[-1])
    return texts


def _accepted(schema: dict[str, Any]) -> bool:
    """Whether the server would take it as ``response_format``'s schema."""
    try:
        check_client_schema(schema, "messages")
    except InvalidRequestError:
        return False
    return True


def find_prompt_schema(
    messages: Iterable[Mapping[str, Any]], *, asked_for_json: bool, setting: PromptSchemaSetting
) -> PromptSchema | None:
    """The reply's schema when the prompt holds exactly one and ``setting`` lets it apply:
    ``asked_for_json`` (the request asked for ``json_object``), or with ``any`` a prompt
    that asks for a \\`\\`\\`json fenced reply. None: the request stays as it is."""
    if setting == "off":
        return None
    texts = _texts(messages)
    fenced = False
    if not asked_for_json:
        if setting != "any" or not any(_FENCE_REQUEST.search(text) for text in texts):
            return None
        fenced = True
    found: list[dict[str, Any]] = []
    for text in texts:
        for value in _objects(text):
            if is_object_schema(value) and value not in found:
                found.append(value)
                if len(found) > 1:
                    return None
    if len(found) != 1 or not _accepted(found[0]):
        return None
    return PromptSchema(found[0], fenced)
