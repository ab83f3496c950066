"""The PicoLM path where Linux's facilities are missing, as on macOS and Windows: the
server started with ``os.killpg``, ``os.getpgid``, ``os.geteuid``, ``os.fchmod``,
``O_NOFOLLOW`` and ``O_CLOEXEC`` taken out of the ``os`` module, ``/proc`` unreadable and
a C library without ``malloc_trim`` (glibc's; macOS and Windows have none). It must
serve the stand-in as always: replies, streams, saved prompt states reused, and an
engine that hangs ended at its time limit (with ``kill()``, as on Windows, instead of a
process group's SIGKILL).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.picolm_setup import MODEL_ID, PicoLMFiles, PicoLMServer, wait_until_gone

# Run as ``python -c LAUNCHER -config FILE``.
LAUNCHER = """
import builtins, os, sys
for name in ("killpg", "getpgid", "geteuid", "fchmod", "O_NOFOLLOW", "O_CLOEXEC"):
    delattr(os, name)
import ctypes
class _LibcWithoutTrim(ctypes.CDLL):
    def __getattr__(self, name):
        if name == "malloc_trim":
            raise AttributeError(name)
        return super().__getattr__(name)
ctypes.CDLL = _LibcWithoutTrim
_open = builtins.open
def _no_proc(file, *args, **kwargs):
    if str(file).startswith("/proc/"):
        raise FileNotFoundError(2, "No such file or directory", file)
    return _open(file, *args, **kwargs)
builtins.open = _no_proc
from picolm_server.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def server(
    picolm_files: PicoLMFiles, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PicoLMServer]:
    workdir = tmp_path_factory.mktemp("portable")
    picolm = {"prompt_cache": True, "cache_dir": str(workdir / "states"), "timeout_seconds": 3}
    with picolm_files.serve(
        workdir, program=["-c", LAUNCHER], picolm=picolm, logging={"level": "debug"}
    ) as running:
        yield running


def chat(server: PicoLMServer, messages: list[dict[str, str]], **extra: object) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": MODEL_ID, "messages": messages, "max_tokens": 4, **extra},
        timeout=60,
    )


def test_replies_streams_and_reused_prompt_states(server: PicoLMServer) -> None:
    messages = [
        {"role": "system", "content": "You are a robot that talks about the sea."},
        {"role": "user", "content": "hello robot, how is the world today?"},
    ]
    cached = []
    for question in ("what is deep in the sea?", "and the wind in the trees?"):
        body = chat(server, messages, temperature=0).json()
        assert body["usage"]["completion_tokens"] == 4
        cached.append(body["usage"]["prompt_tokens_details"]["cached_tokens"])
        messages += [
            {"role": "assistant", "content": body["choices"][0]["message"]["content"]},
            {"role": "user", "content": question},
        ]
    assert cached[0] == 0 and cached[1] > 0
    states = Path(server.log_path).parent / "states"
    assert any(path.is_file() for path in states.rglob("*"))
    stream = chat(server, messages, stream=True)
    lines = [line for line in stream.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_an_engine_that_hangs_is_ended_without_process_groups(server: PicoLMServer) -> None:
    response = chat(server, [{"role": "user", "content": "portable [[hang]]"}])
    assert response.status_code == 504
    (run,) = server.runs_with("portable [[hang]]")
    wait_until_gone([run.pid], timeout=30)
    # The server's health is untouched, and it serves the next request.
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
    assert chat(server, [{"role": "user", "content": "after"}]).status_code == 200


def test_picolm_ran_in_the_servers_own_session(server: PicoLMServer) -> None:
    """Without os.killpg the server asks for no new session (start_new_session is
    POSIX's): the proof that the other path ran."""
    chat(server, [{"role": "user", "content": "which session is this one in, please"}])
    # (A prompt that reuses a saved state starts with placeholders: match its end.)
    (run,) = server.runs_with("in, please")
    assert run.session is not None
    assert run.session == os.getsid(server.process.pid)
    log = server.log()
    assert "Traceback" not in log
    assert "malloc_trim is not available" in log
