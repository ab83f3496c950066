"""Many models from one server process: real models on llama.cpp (SmolLM2, Gemma 3
270M) beside a PicoLM model (the stand-in, or the real PicoLM when ``PICOLM_BINARY``
names a build), picked by name; idle unloads; bad model files next to good ones.

Greedy replies from the shelf are compared with the same model served alone, by a
server of its own: a shelf must not change what a model says.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HAS_LLAMA
from tests.shelf.conftest import write_model
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles
from tests.support.server import RunningServer, run_server

pytestmark = pytest.mark.skipif(not HAS_LLAMA, reason="needs the llama extra")

REAL_PICOLM = os.environ.get("PICOLM_BINARY")
PROMPTS = ("Name a colour.", "What is two plus two?")
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 12}


def picolm_config(picolm_files: PicoLMFiles) -> dict[str, Any]:
    """The PicoLM section (the real build when given), as the shelf's default model."""
    config = picolm_files.config()
    if REAL_PICOLM:
        config["picolm"]["binary"] = REAL_PICOLM
    config["server"]["max_queue"] = 16
    return config


def completions(server: RunningServer, model: str) -> list[Any]:
    client = server.client(max_retries=0)
    out = []
    for prompt in PROMPTS:
        completion = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], **GREEDY
        )
        assert completion.model == model
        out.append(completion)
    return out


def replies(server: RunningServer, model: str) -> list[str]:
    return [c.choices[0].message.content or "" for c in completions(server, model)]


def listing(server: RunningServer) -> dict[str, dict[str, Any]]:
    body = httpx.get(f"{server.openai_base_url}/models", timeout=30).json()
    return {entry["id"]: entry for entry in body["data"]}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_two_llama_models_and_a_picolm_model_answer_as_they_do_alone(
    tmp_path: Path, smollm2: Path, gemma_model: Path, picolm_files: PicoLMFiles
) -> None:
    llama = {"threads": 2, "parallel": 1}
    alone: dict[str, list[str]] = {}
    for model_id, path in (("smol", smollm2), ("gemma", gemma_model)):
        config = {"llama_cpp": {**llama, "model_path": str(path), "model_id": model_id}}
        with run_server(config, tmp_path / f"alone-{model_id}") as server:
            alone[model_id] = replies(server, model_id)
    with run_server(picolm_config(picolm_files), tmp_path / "alone-picolm") as server:
        alone[MODEL_ID] = replies(server, MODEL_ID)

    config = picolm_config(picolm_files)
    config["llama_cpp"] = llama
    config["models"] = [
        {"id": "smol", "path": str(smollm2), "engine": "llama_cpp", "aliases": ["smollm2"]},
        {"id": "gemma", "path": str(gemma_model), "engine": "auto"},
    ]
    with run_server(config, tmp_path / "shelf") as server:
        models = listing(server)
        assert list(models) == [MODEL_ID, "smol", "gemma"]
        assert models[MODEL_ID]["engine"] == "picolm" and models[MODEL_ID]["loaded"]
        assert models["gemma"]["engine"] == "llama_cpp" and not models["gemma"]["loaded"]
        assert models["gemma"]["size_bytes"] == gemma_model.stat().st_size
        estimate = models["gemma"]["memory_bytes"]
        # Alternating: each model in turn, twice over.
        for _ in range(2):
            for model_id in (MODEL_ID, "smol", "gemma"):
                assert replies(server, model_id) == alone[model_id], model_id
        models = listing(server)
        assert all(models[m]["loaded"] for m in ("smol", "gemma"))
        # Measured after the load now, not the estimate from the file.
        assert models["gemma"]["memory_bytes"] != estimate
        assert models["gemma"]["chat_template"].startswith("gemma")

        # Concurrent: every model at once, each asked both prompts.
        async def all_at_once() -> dict[str, list[str]]:
            # Closed inside its event loop: a client left to the garbage collector would
            # close its connections on a loop that is gone.
            async with server.async_client(max_retries=0) as client:

                async def ask(model_id: str, prompt: str) -> str:
                    completion = await client.chat.completions.create(
                        model=model_id, messages=[{"role": "user", "content": prompt}], **GREEDY
                    )
                    return completion.choices[0].message.content or ""

                ids = (MODEL_ID, "smol", "gemma")
                got = await asyncio.gather(*(ask(m, p) for m in ids for p in PROMPTS))
            n = len(PROMPTS)
            return {m: got[i * n : (i + 1) * n] for i, m in enumerate(ids)}

        assert asyncio.run(all_at_once()) == alone
        # An alias answers as its model, under the model's id.
        client = server.client(max_retries=0)
        completion = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": PROMPTS[0]}], **GREEDY
        )
        assert completion.model == "smol"
        assert completion.choices[0].message.content == alone["smol"][0]
        # No model at all: the default one.
        body = httpx.post(
            f"{server.openai_base_url}/chat/completions",
            json={"messages": [{"role": "user", "content": PROMPTS[0]}], **GREEDY},
            timeout=60,
        ).json()
        assert body["model"] == MODEL_ID
        assert body["choices"][0]["message"]["content"] == alone[MODEL_ID][0]
        one = httpx.get(f"{server.openai_base_url}/models/smollm2", timeout=30).json()
        assert (one["id"], one["loaded"], one["engine"]) == ("smol", True, "llama_cpp")


def test_an_idle_model_unloads_after_its_keep_alive(tmp_path: Path, smollm2: Path) -> None:
    config = {
        "llama_cpp": {"threads": 2},
        "models": [{"id": "smol", "path": str(smollm2), "keep_alive": "1s"}],
        "models_dir": str(tmp_path / "empty"),
    }
    (tmp_path / "empty").mkdir()
    with run_server(config, tmp_path / "server") as server:
        # The first entry is the default model; without preload it waits for a request.
        assert not listing(server)["smol"]["loaded"]
        before = rss_bytes(server.process.pid)
        replies(server, "smol")
        loaded = rss_bytes(server.process.pid)
        assert listing(server)["smol"]["loaded"]
        for _ in range(600):  # polled: the unload's time is the keep_alive's, not ours
            if not listing(server)["smol"]["loaded"]:
                break
            time.sleep(0.1)
        assert not listing(server)["smol"]["loaded"]
        after = rss_bytes(server.process.pid)
        # The model's memory is given back (what stays is the allocator's and the
        # libraries', a fraction of the model's).
        assert loaded - before > 100_000_000, (before, loaded)
        assert after - before < (loaded - before) / 2, (before, loaded, after)
        assert re.search(r"model smol unloaded", server.log())
        assert replies(server, "smol")  # and loads again on demand


def test_bad_model_files_fail_their_requests_and_the_others_serve(
    tmp_path: Path, smollm2: Path
) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "notes.gguf").write_text("not a model, a text file\n")
    whole = write_model(tmp_path / "whole.gguf").read_bytes()
    (models_dir / "cut.gguf").write_bytes(whole[: len(whole) // 2])
    write_model(models_dir / "alien.gguf", arch="nonesuch")
    config = {
        "llama_cpp": {"model_path": str(smollm2), "model_id": "smol", "threads": 2},
        "models_dir": str(models_dir),
    }
    with run_server(config, tmp_path / "server") as server:
        models = listing(server)
        assert set(models) == {"smol", "notes", "cut", "alien"}
        assert models["notes"]["problem"] and models["cut"]["problem"]
        for name, cause in (
            ("notes", "not a GGUF file"),
            ("cut", "truncated|ends|beyond|past the end"),
            ("alien", "cannot load|architecture"),
        ):
            response = httpx.post(
                f"{server.openai_base_url}/chat/completions",
                json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
                timeout=120,
            )
            assert response.status_code == 500, (name, response.text)
            error = response.json()["error"]
            assert error["code"] == "model_load_failed" and error["param"] == "model"
            assert error["message"].startswith(f"The model `{name}` failed to load: ")
            assert re.search(cause, error["message"]), error["message"]
            assert replies(server, "smol")  # the server is up and the good model serves
        for name in ("../../etc/passwd", "notes.gguf", str(models_dir / "notes.gguf")):
            response = httpx.post(
                f"{server.openai_base_url}/chat/completions",
                json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "model_not_found"


def metric(server: RunningServer, name: str, model: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    match = re.search(rf'^{name}\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_eight_requests_to_a_cold_model_cause_one_load(tmp_path: Path, smollm2: Path) -> None:
    config = {
        "server": {"max_queue": 16},
        "llama_cpp": {"threads": 2},
        "models": [{"id": "smol", "path": str(smollm2)}],
        "models_dir": str(tmp_path / "empty"),
    }
    (tmp_path / "empty").mkdir()
    with run_server(config, tmp_path / "server") as server:
        assert metric(server, "picolm_model_loads_total", "smol") == 0

        async def eight() -> list[str]:
            async with server.async_client(max_retries=0) as client:
                return await asking(client)

        async def asking(client: Any) -> list[str]:
            completions = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="smol",
                        messages=[{"role": "user", "content": f"Count to {i}."}],
                        max_tokens=4,
                    )
                    for i in range(8)
                )
            )
            return [c.model for c in completions]

        assert asyncio.run(eight()) == ["smol"] * 8
        assert metric(server, "picolm_model_loads_total", "smol") == 1
        assert len(re.findall(r"model smol loaded in", server.log())) == 1
        text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
        loaded = re.search(r"^picolm_models_loaded_memory_bytes(?:\{[^}]*\})? (\S+)$", text, re.M)
        assert loaded and float(loaded.group(1)) == listing(server)["smol"]["memory_bytes"]


def test_a_budget_for_one_model_swaps_on_every_alternate_request(
    tmp_path: Path, smollm2: Path, gemma_model: Path
) -> None:
    llama = {"threads": 2, "parallel": 1}
    models = [
        {"id": "smol", "path": str(smollm2), "engine": "llama_cpp"},
        {"id": "gemma", "path": str(gemma_model), "engine": "llama_cpp"},
    ]
    base = {"llama_cpp": llama, "models": models, "models_dir": str(tmp_path / "empty")}
    (tmp_path / "empty").mkdir()
    # What each takes, measured by a shelf without a budget to speak of.
    with run_server(base, tmp_path / "measure") as server:
        alone = {model: replies(server, model) for model in ("smol", "gemma")}
        measured = {m: e["memory_bytes"] for m, e in listing(server).items()}
    budget = int(max(measured.values()) * 1.3)
    assert budget < sum(measured.values()), measured  # room for one, not both
    config = {**base, "shelf": {"max_loaded_memory": budget}}
    with run_server(config, tmp_path / "shelf") as server:
        for turn in range(4):
            model = ("smol", "gemma")[turn % 2]
            answered = completions(server, model)
            assert [c.choices[0].message.content for c in answered] == alone[model]
            loaded = {m for m, e in listing(server).items() if e["loaded"]}
            assert loaded == {model}
            if turn >= 2:
                # Unloaded and loaded again since it last saw these prompts: their
                # states came back from disk, and the replies are the same.
                for completion in answered:
                    details = completion.usage.prompt_tokens_details
                    assert details is not None and details.cached_tokens, completion.usage
        assert metric(server, "picolm_model_loads_total", "smol") == 2
        assert metric(server, "picolm_model_loads_total", "gemma") == 2
        assert metric(server, "picolm_model_unloads_total", "smol") == 2
        assert metric(server, "picolm_model_unloads_total", "gemma") == 1
        assert "unloading smol to make room for gemma" in server.log()
