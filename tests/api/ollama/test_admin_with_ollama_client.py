"""Model administration through the official ``ollama`` Python client against a real
server process (on the PicoLM stand-in): a pull from nginx serving a real GGUF with
its progress, a chat with the pulled model, a copy and a chat by the new name, deletes,
then the unknown name (``ResponseError`` with 404); and a client on loopback refused
when ``model_admin`` is off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
