"""Model administration through the official ``ollama`` Python client against a real
server process (on the PicoLM stand-in): a pull from nginx serving a real GGUF with
its progress, a chat with the pulled model, a copy and a chat by the new name, deletes,
then the unknown name (``ResponseError`` with 404); a client on loopback refused when
``model_admin`` is off; one pull of a file at a time; a pull whose client goes away
stops its download."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from picolm_server.models.pulled import was_pulled
from tests.support.fake_picolm import LOG_ENV
from tests.support.nginx import RunningNginx, nginx_binary, run_file_server
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles
from tests.support.server import RunningServer, run_server
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")

KEY = "sk-ollama-admin"


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNginx]:
    root = tmp_path_factory.mktemp("served")
    build_tiny_llama_gguf(root / "tiny.gguf")
    with run_file_server(root, tmp_path_factory.mktemp("nginx")) as running:
        yield running


def serve(picolm_files: PicoLMFiles, nginx: RunningNginx, workdir: Path, **server: Any) -> Any:
    config = picolm_files.config(
        server={"api_key": KEY, "pull_allow": [f"{nginx.base_url}/"], **server}
    )
    config["models_dir"] = str(workdir / "models")
    (workdir / "models").mkdir(parents=True)
    return run_server(config, workdir, env={LOG_ENV: str(workdir / "picolm.jsonl")})


def chat(server: RunningServer, model: str) -> str:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key=KEY, max_retries=0)
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    return completion.choices[0].message.content or ""


def test_pull_copy_chat_and_delete_with_the_ollama_client(
    picolm_files: PicoLMFiles, nginx: RunningNginx, tmp_path: Path
) -> None:
    with serve(picolm_files, nginx, tmp_path) as server:
        client = ollama.Client(host=server.base_url, headers={"Authorization": f"Bearer {KEY}"})
        progress = list(client.pull(f"{nginx.base_url}/tiny.gguf", stream=True))
        assert all(isinstance(p, ollama.ProgressResponse) for p in progress)
        statuses = [p.status for p in progress]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        transfer = [p for p in progress if p.status == "pulling tiny.gguf"]
        assert transfer[-1].completed == transfer[-1].total
        assert transfer[-1].total == (tmp_path / "models" / "tiny.gguf").stat().st_size
        verified = next(p for p in progress if p.status == "verifying sha256 digest")
        assert verified.digest is not None and verified.digest.startswith("sha256:")
        assert was_pulled(tmp_path / "models" / "tiny.gguf")

        assert chat(server, "tiny")
        assert client.copy("tiny", "my-tiny").status == "success"
        assert chat(server, "my-tiny")
        assert client.delete("my-tiny").status == "success"  # the alias alone
        assert chat(server, "tiny")

        assert client.delete("tiny:latest").status == "success"
        assert sorted(p.name for p in (tmp_path / "models").iterdir()) == []
        with pytest.raises(openai.NotFoundError):
            chat(server, "tiny")
        for call in (lambda: client.delete("tiny"), lambda: client.copy("tiny", "again")):
            with pytest.raises(ollama.ResponseError) as refused:
                call()
            assert refused.value.status_code == 404
        # The default model serves on; it cannot be deleted.
        assert chat(server, MODEL_ID)
        with pytest.raises(ollama.ResponseError) as kept:
            client.delete(MODEL_ID)
        assert kept.value.status_code == 400


def test_model_admin_off_refuses_the_ollama_client(
    picolm_files: PicoLMFiles, nginx: RunningNginx, tmp_path: Path
) -> None:
    with serve(picolm_files, nginx, tmp_path, model_admin="off") as server:
        client = ollama.Client(host=server.base_url, headers={"Authorization": f"Bearer {KEY}"})
        for call in (
            lambda: client.pull(f"{nginx.base_url}/tiny.gguf"),
            lambda: client.copy(MODEL_ID, "copy"),
            lambda: client.delete(MODEL_ID),
        ):
            with pytest.raises(ollama.ResponseError) as refused:
                call()
            assert refused.value.status_code == 403
        assert list((tmp_path / "models").iterdir()) == []


class SlowFile:
    """A loopback server sending one file: the first 64 KiB at once, the rest in small
    pieces once ``gate`` is set; it records, per request, whether the client cut the
    connection before the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.gate = threading.Event()
        self.cut: list[bool] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(owner.data)))
                self.end_headers()
                try:
                    self.wfile.write(owner.data[:65536])
                    self.wfile.flush()
                    owner.gate.wait(60)
                    for start in range(65536, len(owner.data), 8192):
                        self.wfile.write(owner.data[start : start + 8192])
                        self.wfile.flush()
                        time.sleep(0.005)  # pacing, so that a cut is noticed in time
                except OSError:
                    owner.cut.append(True)
                    return
                owner.cut.append(False)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_client_that_goes_away_stops_its_pull(
    picolm_files: PicoLMFiles, nginx: RunningNginx, tmp_path: Path
) -> None:
    source = tmp_path / "source.gguf"
    build_tiny_llama_gguf(source)
    slow = SlowFile(source.read_bytes())
    try:
        with serve(picolm_files, nginx, tmp_path, pull_allow=[f"{slow.base_url}/"]) as server:
            headers = {"Authorization": f"Bearer {KEY}"}
            url = f"{slow.base_url}/tiny.gguf"
            with httpx.stream(
                "POST", f"{server.base_url}/api/pull", json={"model": url}, headers=headers
            ) as answer:
                # Held, not left to the garbage collector: closing the iterator would
                # close the response, and this client must stay until it goes below.
                lines = answer.iter_lines()
                while json.loads(next(lines))["status"] != "pulling tiny.gguf":
                    pass  # until the transfer has begun
                # One pull of a file at a time (both would write its partial file).
                # As patient as the other calls here: a loaded machine can take seconds.
                second = httpx.post(
                    f"{server.base_url}/api/pull",
                    json={"model": url},
                    headers=headers,
                    timeout=60,
                )
                assert second.status_code == 400 and "being pulled already" in second.text
                # Then this client goes away.
            deadline = time.monotonic() + 60
            while "POST /api/pull" not in server.log() and time.monotonic() < deadline:
                time.sleep(0.05)  # until the server has seen the client go
            slow.gate.set()
            # The download stops at its next piece; the same pull then runs whole.
            while True:
                again = httpx.post(
                    f"{server.base_url}/api/pull",
                    json={"model": url, "stream": False},
                    headers=headers,
                    timeout=60,
                )
                if "being pulled already" not in again.text or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert again.status_code == 200, again.text
            assert slow.cut[0] is True and slow.cut[-1] is False
            assert (tmp_path / "models" / "tiny.gguf").read_bytes() == slow.data
    finally:
        slow.close()
