"""What the server loads at start: only what the configured engine needs.

The start-up budget (memory and time, docs/benchmarks.md) is guarded here by what is
imported, not by a clock: a PicoLM server that is ready to serve must not have loaded
any of :data:`NOT_AT_START`. Each one is either the llama.cpp engine's, or needed only
by some requests and imported when the first of them comes (README, "What the server
loads").
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.picolm_setup import PicoLMFiles

# Packages and modules, with what each costs and why it is not needed at start.
NOT_AT_START = (
    "numpy",  # about 16 MiB with gguf; llama.cpp's engine loads it itself
    "gguf",  # the server reads GGUF metadata itself (gguf_metadata.py)
    "llama_cpp",  # the other engine
    "jsonschema",  # first request with a tool or a response_format schema
    "referencing",  # the same
    "rpds",  # the same (referencing's)
    "fastapi",  # not used: plain Starlette routes (routing.py)
    "opentelemetry",  # FastAPI's, and nothing of ours
    "picolm_server.engines.picolm.json_mode",  # first reply held to a JSON schema on PicoLM
    "picolm_server.schema_json",  # the same
    # Each wire API: its first request (api/routers.py). About 3 MiB of request and
    # response models together.
    "picolm_server.api.chat",
    "picolm_server.api.chat.types",  # the chat-completion types
    "picolm_server.api.responses.routes",
    "picolm_server.api.responses.types",
    "picolm_server.api.anthropic.routes",
    "picolm_server.api.anthropic.types",
    "picolm_server.api.anthropic.errors",
    "picolm_server.api.completions",
    "picolm_server.api.embeddings",
    "picolm_server.api.tokenize",
    "sqlite3",  # 1.3 MiB: the Responses API's store, opened on first use
    "prometheus_client",  # 1.3 MiB: the first scrape of /metrics (metrics_exposition.py)
    # About 1 MiB: only when a PICOLM_<SECTION>... environment variable is set (config.py).
    "pydantic_settings",
    "picolm_server.config.env",
    "picolm_server.observability.exposition",  # the same
    # About 7 MiB and a third of the start-up time: pydantic and its core, for the
    # request and response types (the settings are plain dataclasses, config_check.py).
    "pydantic",
    "pydantic_core",
    "picolm_server.api.model_types",  # GET /v1/models
    # `picolm-server pull` only (models/download.py): the HTTP client and the progress bar.
    "httpx",
    "tqdm",
    "picolm_server.models.download",
    # The request path: request checks, tool calls, the rules applied to the output
    # (generation/core.py imports them with the first generation).
    "picolm_server.tool_calls",
    "picolm_server.generation.prepare",
    "picolm_server.generation.run",
    "picolm_server.generation.stream",
)

# What `picolm-server` does before it starts serving (cli.main, without uvicorn.run).
PROGRAM = """
import json, sys
from picolm_server import cli
settings = cli.load_from_args(["-binary", sys.argv[1], "-model-path", sys.argv[2]])
core = cli.build_core(settings)
cli.create_app(core, api_key="", max_body=1024, log_requests=False)
loaded = {part for name in sys.modules for part in (name, name.split(".")[0])}
print(json.dumps(sorted(loaded & set(sys.argv[3:]))))
"""


def loaded_at_start(
    picolm_files: PicoLMFiles, program: str = PROGRAM, *extra_arguments: str
) -> list[str]:
    """Which of :data:`NOT_AT_START` ``program`` has loaded when it ends."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            program,
            str(picolm_files.binary),
            str(picolm_files.model),
            *extra_arguments,
            *NOT_AT_START,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_a_picolm_server_loads_only_what_it_needs_at_start(picolm_files: PicoLMFiles) -> None:
    assert loaded_at_start(picolm_files) == []


def test_the_check_sees_a_package_that_is_loaded(picolm_files: PicoLMFiles) -> None:
    # The same program after a schema check: jsonschema is loaded then, and seen.
    program = PROGRAM.replace(
        "loaded = ",
        "from picolm_server.tool_calls.schemas import check_client_schema\n"
        "check_client_schema({'type': 'object'}, 'tools[0]')\nloaded = ",
        1,
    )
    assert sorted(loaded_at_start(picolm_files, program)) == [
        "jsonschema",
        "picolm_server.tool_calls",
        "referencing",
        "rpds",
    ]


# The same program, then one request to each lazily loaded API and a scrape.
FIRST_REQUESTS = PROGRAM.replace(
    'cli.create_app(core, api_key="", max_body=1024, log_requests=False)',
    "app = cli.create_app(core, api_key='', max_body=1024, log_requests=False)\n"
    "from starlette.testclient import TestClient\n"
    "client = TestClient(app)\n"
    "for path in sys.argv[3].split(','):\n"
    "    if path == '/metrics':\n"
    "        status = client.get(path).status_code\n"
    "    else:\n"
    "        status = client.post(path, json={}).status_code\n"
    "    assert status in (200, 400), (path, status)\n",
    1,
).replace("sys.argv[3:]", "sys.argv[4:]")
assert "TestClient(app)" in FIRST_REQUESTS, "PROGRAM no longer has the create_app line to extend"


# Every API parses its body with pydantic; the ones that generate import the request
# path with their module.
TYPES = {"pydantic", "pydantic_core"}
GENERATING = TYPES | {
    "picolm_server.tool_calls",
    "picolm_server.generation.run",
    "picolm_server.generation.stream",
}


def test_each_api_loads_with_its_first_request(picolm_files: PicoLMFiles) -> None:
    """What is not loaded at start is loaded when it is needed: the request answers
    (a 400 for an empty body), and the check above sees it."""
    for paths, expected in (
        ("/tokenize", TYPES | {"picolm_server.api.tokenize"}),
        (
            "/v1/chat/completions",
            GENERATING | {"picolm_server.api.chat", "picolm_server.api.chat.types"},
        ),
        (
            "/v1/messages",
            GENERATING
            | {
                "picolm_server.api.anthropic.routes",
                "picolm_server.api.anthropic.types",
                "picolm_server.api.anthropic.errors",
            },
        ),
        (
            "/v1/responses",
            GENERATING
            | {"picolm_server.api.responses.routes", "picolm_server.api.responses.types"},
        ),
        # Text completions share the chat types' usage and stream options.
        (
            "/v1/completions",
            GENERATING
            | {
                "picolm_server.api.completions",
                "picolm_server.api.chat",  # the package of the types
                "picolm_server.api.chat.types",
            },
        ),
        ("/v1/embeddings", TYPES | {"picolm_server.api.embeddings"}),
        ("/metrics", {"prometheus_client", "picolm_server.observability.exposition"}),
    ):
        loaded = set(loaded_at_start(picolm_files, FIRST_REQUESTS, paths))
        assert loaded == expected, paths
