"""Server-sent events as the wire APIs write them: one ``data:`` line of JSON (OpenAI's
chat and completions, ending with ``data: [DONE]``), or an ``event:`` line naming it
first (the Responses API, Anthropic's Messages), and the per-token content event
written from a template.
"""

from __future__ import annotations

import json

from .json_text import escape_line_separators

DONE_EVENT = b"data: [DONE]\n\n"


def sse_event(json_text: str) -> bytes:
    """One ``data:`` event carrying an already serialised JSON document."""
    return b"data: " + escape_line_separators(json_text).encode("utf-8") + b"\n\n"


def named_event(name: str, json_text: str) -> bytes:
    """One event named by an ``event:`` line, its JSON document in the ``data:`` line."""
    return f"event: {name}\ndata: {escape_line_separators(json_text)}\n\n".encode()


class ContentChunkTemplate:
    """The SSE event of a content delta, serialised once per stream and filled in per
    token: building and dumping a pydantic chunk for every token costs the event loop
    more than the token's own text handling on a small machine.

    ``sample_json`` is a full chunk whose content is ``marker``; every event this renders
    is that chunk with the content replaced.
    """

    def __init__(self, sample_json: str, marker: str) -> None:
        sample_json = escape_line_separators(sample_json)
        head, found, tail = sample_json.partition(json.dumps(marker))
        if not found or json.dumps(marker) in tail:
            raise ValueError("the marker must appear exactly once in the sample chunk")
        self._head = b"data: " + head.encode("utf-8")
        self._tail = tail.encode("utf-8") + b"\n\n"

    def render(self, content: str) -> bytes:
        escaped = escape_line_separators(json.dumps(content, ensure_ascii=False))
        return self._head + escaped.encode("utf-8") + self._tail
