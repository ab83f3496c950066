"""Hostile schemas, class "references": a client's tool or response_format schema must
never make the server fetch a URL or read a local file (SSRF, file disclosure).

Every case runs on both engines (SmolLM2 on llama.cpp, PicoLM through its stand-in),
streamed and not, against a loopback HTTP server that records any request it gets and
a secret file: the answer is a 400 naming the parameter, the recorder is never
contacted, the secret never appears, and no generation starts.
"""

from __future__ import annotations

import http.server
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.both_engines import ENGINES, Target, target_for


@pytest.fixture(params=ENGINES)
def target(request: pytest.FixtureRequest) -> Target:
    return target_for(request)


@dataclass
class Recorder:
    """A loopback HTTP server that serves a schema holding a secret and notes every hit."""

    secret: str
    hits: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def body(self) -> bytes:
        return json.dumps(
            {"type": "object", "properties": {"k": {"const": self.secret}}, "required": ["k"]}
        ).encode()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    record = Recorder(secret="SECRET-" + secrets.token_hex(8))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            record.hits.append(self.path)
            payload = record.body()
            self.send_response(200)
            self.send_header("Content-Type", "application/schema+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    record.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def secret_file(tmp_path: Path, recorder: Recorder) -> Path:
    path = tmp_path / "s.json"
    path.write_bytes(recorder.body())
    return path


# A case: from the recorder's base URL and the secret file's URI, the request fields
# that carry the hostile schema, and the param the 400 must name.
Case = Callable[[str, str], tuple[dict[str, Any], str]]


def tool(parameters: dict[str, Any], name: str = "lookup") -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def tools_case(parameters: Callable[[str, str], dict[str, Any]]) -> Case:
    def build(base: str, file_uri: str) -> tuple[dict[str, Any], str]:
        fields = {"tools": [tool(parameters(base, file_uri))], "tool_choice": "required"}
        return fields, "tools[0].function.parameters"

    return build


def response_case(schema: Callable[[str, str], dict[str, Any]]) -> Case:
    def build(base: str, file_uri: str) -> tuple[dict[str, Any], str]:
        fields = {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": schema(base, file_uri)},
            }
        }
        return fields, "response_format.json_schema.schema"

    return build


def second_tool_case(base: str, file_uri: str) -> tuple[dict[str, Any], str]:
    fields = {
        "tools": [
            tool({"type": "object", "properties": {"q": {"type": "string"}}}),
            tool({"type": "object", "properties": {"q": {"$ref": f"{base}/s.json"}}}, "other"),
        ],
        "tool_choice": "auto",
    }
    return fields, "tools[1].function.parameters"


CASES: dict[str, Case] = {
    "file-ref": tools_case(lambda base, file: {"$ref": file}),
    "http-ref": tools_case(lambda base, file: {"$ref": f"{base}/s.json"}),
    "nested-http-ref": tools_case(
        lambda base, file: {
            "type": "object",
            "properties": {"a": {"type": "array", "items": {"$ref": f"{base}/s.json"}}},
        }
    ),
    "nested-file-ref-in-defs": tools_case(
        lambda base, file: {
            "type": "object",
            "$defs": {"x": {"allOf": [{"$ref": file}]}},
            "properties": {"a": {"$ref": "#/$defs/x"}},
        }
    ),
    "id-moves-base": tools_case(
        lambda base, file: {
            "$id": f"{base}/",
            "type": "object",
            "properties": {"a": {"$ref": "s.json"}},
        }
    ),
    "remote-metaschema": tools_case(
        lambda base, file: {"$schema": f"{base}/meta.json", "type": "object"}
    ),
    "dynamic-ref": tools_case(
        lambda base, file: {
            "type": "object",
            "properties": {"a": {"$dynamicRef": f"{base}/s.json#meta"}},
        }
    ),
    "response-format-http-ref": response_case(lambda base, file: {"$ref": f"{base}/s.json"}),
    "response-format-nested-file-ref": response_case(
        lambda base, file: {"type": "object", "properties": {"a": {"$ref": file}}}
    ),
    "second-tool": second_tool_case,
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_schema_references_never_leave_the_schema(
    target: Target, recorder: Recorder, secret_file: Path, case: str, stream: bool
) -> None:
    fields, param = CASES[case](recorder.base, secret_file.as_uri())
    marker = "refs-" + secrets.token_hex(6)
    # The stand-in would answer with exactly the secret's shape: a generation that ran
    # would validate against whatever the reference fetched.
    reply = json.dumps({"k": recorder.secret})
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": f"{marker} [[reply:{reply}]]"}],
        "max_tokens": 24,
        "temperature": 0,
        "stream": stream,
        **fields,
    }
    response = httpx.post(
        f"{target.server.base_url}/v1/chat/completions",
        json=body,
        headers=target.headers,
        timeout=120,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == "invalid_schema"
    assert recorder.secret not in response.text
    assert recorder.hits == []
    assert target.runs_with(marker) == 0  # refused before any generation
