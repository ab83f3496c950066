"""What the server loads at start: only what the configured engine needs."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.picolm_setup import PicoLMFiles

HEAVY = ("numpy", "gguf", "llama_cpp")

PROGRAM = """
import json, sys
from picolm_server import cli
settings = cli.load_from_args(["-binary", sys.argv[1], "-model-path", sys.argv[2]])
service = cli.build_service(settings)
cli.create_app(service, api_key="", max_body=1024, log_requests=False)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[3:]))))
"""


def test_a_picolm_server_loads_neither_numpy_nor_gguf_nor_llama_cpp(
    picolm_files: PicoLMFiles,
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(picolm_files.binary), str(picolm_files.model), *HEAVY],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout.splitlines()[-1]) == []
