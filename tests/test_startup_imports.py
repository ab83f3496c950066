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
    "picolm_server.engines.picolm_json",  # first reply held to a JSON schema on PicoLM
    "picolm_server.schema_json",  # the same
)

# What `picolm-server` does before it starts serving (cli.main, without uvicorn.run).
PROGRAM = """
import json, sys
from picolm_server import cli, runner
settings = cli.load_from_args(["-binary", sys.argv[1], "-model-path", sys.argv[2]])
service = cli.build_service(settings)
cli.create_app(service, api_key="", max_body=1024, log_requests=False)
loaded = {part for name in sys.modules for part in (name, name.split(".")[0])}
print(json.dumps(sorted(loaded & set(sys.argv[3:]))))
"""


def loaded_at_start(picolm_files: PicoLMFiles, program: str = PROGRAM) -> list[str]:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            program,
            str(picolm_files.binary),
            str(picolm_files.model),
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
    assert loaded_at_start(picolm_files, program) == ["jsonschema", "referencing", "rpds"]
