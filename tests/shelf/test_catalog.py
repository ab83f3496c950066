"""The catalog: the models on the shelf from the settings (the section's model, the
models list, the models directory, the embedded SmolLM2), their engines and options,
and lookups by id or alias only."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gguf
import pytest

from picolm_server.config.settings import (
    KEEP_FOREVER,
    ConfigError,
    LlamaCppSection,
    PicoLMSection,
    Settings,
)
from picolm_server.models import default_models_dir
from picolm_server.models.embedded import EMBEDDED_MODEL_ID
from picolm_server.shelf.catalog import Catalog, ShelfModel, build_catalog
from tests.shelf.conftest import write_model
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf
from tests.test_gguf import CHECKED_HOSTILE, HOSTILE

BINARY = "/opt/picolm/picolm"  # the catalog names the binary; the engine's factory runs it


def catalog(values: dict[str, Any], **kwargs: Any) -> Catalog:
    return build_catalog(Settings.from_values(values), **kwargs)


def refused(values: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        catalog(values, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def no_embedded(settings: Settings) -> ShelfModel | None:
    return None


def ids(shelf: Catalog) -> list[str]:
    return [model.id for model in shelf]


# ---- with no configuration -----------------------------------------------------------


def test_no_configuration_is_the_embedded_smollm2(smollm2: Path) -> None:
    shelf = catalog({})
    assert ids(shelf) == [EMBEDDED_MODEL_ID]
    model = shelf.default
    assert shelf.find(None) is shelf.find("") is shelf.find(EMBEDDED_MODEL_ID) is model
    assert (model.engine, model.engine_reason) == ("llama_cpp", "llama_cpp: the embedded model")
    assert model.path == smollm2.resolve() and model.size_bytes == smollm2.stat().st_size
    assert isinstance(model.options, LlamaCppSection)
    assert model.options == LlamaCppSection(model_path=str(model.path), model_id=model.id)
    tensor_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(smollm2).tensors)
    # The KV cache of 4 slots of 2048 tokens: 30 layers, 3 KV heads of 64, K and V, f16.
    assert model.estimate_bytes == tensor_bytes + 30 * (2048 * 4) * 2 * 3 * 64 * 2
    assert (model.keep_alive, model.preload, model.problem) == (KEEP_FOREVER, True, None)
    assert model.describe() == (
        f"model {EMBEDDED_MODEL_ID!r}: llama_cpp: the embedded model; {model.path}, 98 MB, "
        f"about {model.estimate_bytes / 1e6:.0f} MB loaded"
    )
    assert shelf.models_dir == default_models_dir()


def test_no_configuration_adds_the_default_directory(smollm2: Path, _own_data_home: Path) -> None:
    directory = _own_data_home / "picolm-server" / "models"
    directory.mkdir(parents=True)
    write_model(directory / "tiny.gguf")
    build_tiny_llama_gguf(directory / "b-llama.gguf")
    shelf = catalog({})
    assert ids(shelf) == [EMBEDDED_MODEL_ID, "b-llama", "tiny"]
    assert shelf.default.id == EMBEDDED_MODEL_ID
    tiny = shelf.find("tiny")
    assert tiny is not None and tiny.source == "models_dir" and not tiny.preload
    # No PicoLM binary: llama.cpp runs everything.
    assert tiny.engine_reason == "llama_cpp: no PicoLM binary is configured"


# ---- the single sections, as before the shelf ----------------------------------------


def test_the_picolm_section_is_a_shelf_of_one(tmp_path: Path) -> None:
    path = build_tiny_llama_gguf(tmp_path / "tiny.gguf")
    shelf = catalog({"picolm": {"binary": BINARY, "model_path": str(path), "threads": 2}})
    assert ids(shelf) == ["picolm-local"]
    model = shelf.default
    assert (model.engine, model.engine_reason) == ("picolm", "picolm: the picolm section's model")
    assert model.options == PicoLMSection(binary=BINARY, model_path=str(path.resolve()), threads=2)
    assert (model.source, model.origin, model.preload) == ("default", "picolm.model_path", True)


def test_the_llama_cpp_section_and_its_flags(tmp_path: Path) -> None:
    path = write_model(tmp_path / "my-model.gguf")
    shelf = catalog({"llama_cpp": {"model_path": str(path), "parallel": 2}})
    assert ids(shelf) == ["my-model"]  # the file's name, as before
    named = catalog({"llama_cpp": {"model_path": str(path), "model_id": "mine"}})
    assert ids(named) == ["mine"] and named.default.engine == "llama_cpp"


def test_the_sections_model_must_be_sound_at_start(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.gguf")
    message = refused({"picolm": {"binary": BINARY, "model_path": missing}})
    assert message.startswith("picolm.model_path: ") and message.endswith("no such file")
    text = tmp_path / "text.gguf"
    text.write_text("hello")
    assert "not a GGUF file" in refused({"llama_cpp": {"model_path": str(text)}})
    assert refused({"engine": "picolm"}) == "picolm.binary: required when engine is picolm"
    assert refused({"engine": "picolm", "picolm": {"binary": BINARY}}).startswith(
        "picolm.model_path: required"
    )


# ---- the models list -----------------------------------------------------------------


def test_entries_with_their_engines_options_and_names(tmp_path: Path) -> None:
    tiny = build_tiny_llama_gguf(tmp_path / "tiny.gguf")
    gpt2 = write_model(tmp_path / "gpt2.gguf", vocabulary="gpt2")
    shelf = catalog(
        {
            "picolm": {"binary": BINARY, "threads": 3, "max_tokens": 100},
            "llama_cpp": {"parallel": 2},
            "shelf": {"keep_alive": "10m"},
            "models": [
                {
                    "id": "tiny",
                    "aliases": ["chat", "default-chat"],
                    "path": str(tiny),
                    "context_length": 512,
                    "parallel": 8,  # llama.cpp's: ignored for PicoLM
                    "keep_alive": -1,
                },
                {"id": "coder", "path": str(gpt2), "threads": 0, "preload": True},
            ],
        }
    )
    assert ids(shelf) == ["tiny", "coder"]
    assert shelf.default.id == "tiny"  # the first entry, with no section model
    first, second = shelf.models
    assert shelf.find("chat") is shelf.find("default-chat") is shelf.find("tiny") is first
    # Ollama's form of a name without a tag: the same model, never another name's.
    assert shelf.find("tiny:latest") is shelf.find("chat:latest") is first
    assert shelf.find("tiny:7b") is None and shelf.find(":latest") is None
    assert (first.engine, first.engine_reason) == (
        "picolm",
        "picolm: llama architecture, SentencePiece, F32",
    )
    assert first.options == PicoLMSection(
        binary=BINARY,
        model_path=str(tiny.resolve()),
        model_id="tiny",
        threads=3,
        max_tokens=100,
        context_length=512,
    )
    assert (first.keep_alive, first.preload, first.origin) == (KEEP_FOREVER, False, "models[0]")
    assert second.engine_reason == "llama_cpp: gpt2 vocabulary is not SentencePiece"
    assert second.options == LlamaCppSection(
        model_path=str(gpt2.resolve()), model_id="coder", parallel=2, threads=0
    )
    assert (second.keep_alive, second.preload) == (600.0, True)


def test_the_estimate_follows_the_entrys_context(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf", context=4096)
    entry = {"id": "m", "path": str(path), "context_length": 1024, "parallel": 1}
    small = catalog({"models": [entry]}).default
    large = catalog({"models": [{**entry, "context_length": 4096}]}).default
    # Each position: 2 layers x 2 KV heads x 16 wide x K and V x 2 bytes = 256 bytes.
    assert large.estimate_bytes - small.estimate_bytes == (4096 - 1024) * 256


def test_an_entrys_options_are_checked_by_its_engines_rules(tmp_path: Path) -> None:
    path = str(build_tiny_llama_gguf(tmp_path / "tiny.gguf"))
    picolm = {"binary": BINARY}
    # llama.cpp takes 0 threads as every core; PicoLM needs one at least.
    message = refused({"picolm": picolm, "models": [{"id": "t", "path": path, "threads": 0}]})
    assert message.startswith("models[0].threads: ")
    message = refused({"models": [{"id": "t", "path": path, "engine": "picolm"}]})
    assert message == "models[0].engine: picolm needs picolm.binary"


@pytest.mark.parametrize(
    ("models", "names"),
    [
        ([{"id": "a"}, {"id": "a"}], ("models[1].id", "models[0].id")),
        ([{"id": "a", "aliases": ["b"]}, {"id": "b"}], ("models[1].id", "models[0].aliases[0]")),
        ([{"id": "a", "aliases": ["x"]}, {"id": "b", "aliases": ["x"]}], ("models[1].aliases[0]",)),
        ([{"id": "a", "aliases": ["a"]}], ("models[0].aliases[0]", "models[0].id")),
        ([{"id": ""}], ("models[0].id",)),
        ([{"id": " a"}], ("models[0].id",)),
        ([{"id": "a\nb"}], ("models[0].id",)),
        ([{"id": "a", "aliases": ["x\x00"]}], ("models[0].aliases[0]",)),
    ],
)
def test_a_name_given_twice_or_unfit_is_refused(
    tmp_path: Path, models: list[dict[str, Any]], names: tuple[str, ...]
) -> None:
    for index, entry in enumerate(models):
        entry["path"] = str(write_model(tmp_path / f"{index}.gguf"))
    message = refused({"models": models})
    assert all(name in message for name in names), message


def test_a_file_given_twice_is_refused(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf")
    link = tmp_path / "link.gguf"
    link.symlink_to(path)
    message = refused({"models": [{"id": "a", "path": str(path)}, {"id": "b", "path": str(link)}]})
    assert message.startswith("models[1]: ") and "models[0]" in message
    section = {"llama_cpp": {"model_path": str(path)}, "models": [{"id": "b", "path": str(path)}]}
    assert "llama_cpp.model_path" in refused(section)
    same_name = {"llama_cpp": {"model_path": str(path)}, "models": [{"id": "m", "path": str(link)}]}
    assert "llama_cpp.model_id" in refused(same_name)


def test_an_entry_whose_file_is_bad_stays_with_its_problem(tmp_path: Path) -> None:
    good = write_model(tmp_path / "good.gguf")
    text = tmp_path / "text.gguf"
    text.write_text("not a model")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[:-64])
    shelf = catalog(
        {
            "models": [
                {"id": "good", "path": str(good)},
                {"id": "gone", "path": str(tmp_path / "gone.gguf")},
                {"id": "text", "path": str(text)},
                {"id": "cut", "path": str(cut)},
            ]
        }
    )
    problems = {model.id: model.problem for model in shelf}
    assert problems["good"] is None
    assert str(problems["gone"]).endswith("no such file")
    assert "not a GGUF file" in str(problems["text"])
    assert "truncated GGUF" in str(problems["cut"])
    gone = shelf.find("gone")
    assert gone is not None and (gone.size_bytes, gone.estimate_bytes) == (0, 0)
    assert "cannot load" in gone.describe()


def test_relative_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_model(tmp_path / "m.gguf")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    shelf = catalog({"models": [{"id": "a", "path": "m.gguf"}]})
    assert shelf.default.path == tmp_path.resolve() / "m.gguf"
    assert catalog({"models": [{"id": "a", "path": "~/m.gguf"}]}).default.path == shelf.default.path


# ---- the models directory ------------------------------------------------------------


def test_the_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "models"
    directory.mkdir()
    outside = write_model(tmp_path / "elsewhere.gguf")
    write_model(directory / "b.gguf")
    write_model(directory / "a.gguf", vocabulary="gpt2")
    (directory / "linked.gguf").symlink_to(outside)  # links are followed, wherever they go
    (directory / "broken.gguf").symlink_to(tmp_path / "nowhere.gguf")
    (directory / "sub.gguf").mkdir()
    write_model(directory / "sub.gguf" / "inner.gguf")  # not inside: inside a subdirectory
    write_model(directory / ".hidden.gguf")
    write_model(directory / ".c.gguf.part")  # a download in progress
    write_model(directory / "notes.txt")
    write_model(directory / "upper.GGUF")
    write_model(directory / ".gguf")
    (directory / "text.gguf").write_text("a text file named .gguf")
    with caplog.at_level(logging.WARNING, logger="picolm_server"):
        shelf = catalog(
            {"models_dir": str(directory), "picolm": {"binary": BINARY}}, embedded=no_embedded
        )
    assert ids(shelf) == ["a", "b", "linked", "text"]
    assert shelf.default.id == "a"  # no embedded model: the directory's first
    linked = shelf.find("linked")
    assert linked is not None and linked.path == outside.resolve()
    engines = {model.id: model.engine_reason for model in shelf}
    assert engines["a"] == "llama_cpp: gpt2 vocabulary is not SentencePiece"
    assert engines["b"] == "picolm: llama architecture, SentencePiece, Q4_K"
    text = shelf.find("text")
    assert text is not None and "not a GGUF file" in str(text.problem)
    assert len(shelf.skipped) == 2
    assert any("broken.gguf" in line for line in shelf.skipped)
    assert any("sub.gguf" in line for line in shelf.skipped)
    assert "broken.gguf" in caplog.text and "sub.gguf" in caplog.text


def test_an_entry_for_a_file_of_the_directory_wins(tmp_path: Path) -> None:
    directory = tmp_path / "models"
    directory.mkdir()
    path = write_model(directory / "tinyllama-1.1b.gguf")
    write_model(directory / "other.gguf")
    shelf = catalog(
        {
            "models_dir": str(directory),
            "models": [{"id": "tiny", "path": str(path), "keep_alive": 0}],
        }
    )
    assert ids(shelf) == ["tiny", "other"]
    tiny = shelf.find("tiny")
    assert tiny is not None and tiny.keep_alive == 0.0 and tiny.source == "models"
    assert shelf.find("tinyllama-1.1b") is None


def test_a_file_whose_name_is_taken_is_left_out(tmp_path: Path) -> None:
    directory = tmp_path / "models"
    directory.mkdir()
    write_model(directory / "chat.gguf")
    elsewhere = write_model(tmp_path / "tiny.gguf")
    shelf = catalog(
        {
            "models_dir": str(directory),
            "models": [{"id": "tiny", "aliases": ["chat"], "path": str(elsewhere)}],
        }
    )
    assert ids(shelf) == ["tiny"]
    assert shelf.find("chat") is shelf.default
    assert shelf.skipped == (f"{directory / 'chat.gguf'}: 'chat' is already the name of "
                             "models[0].aliases[0]",)  # fmt: skip


def test_no_model_at_all(tmp_path: Path) -> None:
    message = refused({}, embedded=no_embedded)
    assert message.startswith("no model to serve") and "pip install" in message


# ---- lookups -------------------------------------------------------------------------


def test_a_name_is_never_a_path(tmp_path: Path) -> None:
    directory = tmp_path / "models"
    directory.mkdir()
    path = write_model(directory / "m.gguf")
    shelf = catalog({"models_dir": str(directory)}, embedded=no_embedded)
    assert shelf.find("m") is shelf.default
    for name in [
        "../../etc/passwd",
        "/etc/passwd",
        str(path),
        "m.gguf",
        "./m",
        "models/m",
        "M",
        "m ",
        "m\x00",
    ]:
        assert shelf.find(name) is None, name


def test_real_models_side_by_side(tmp_path: Path, smollm2: Path, gemma_head: Path) -> None:
    """SmolLM2 (gpt2 vocabulary), a LLaMA PicoLM runs, and Gemma's head (cut short) in one
    directory, with a PicoLM binary configured."""
    directory = tmp_path / "models"
    directory.mkdir()
    (directory / "smollm2.gguf").symlink_to(smollm2)
    (directory / "gemma-head.gguf").symlink_to(gemma_head)
    build_tiny_llama_gguf(directory / "tiny.gguf")
    settings = {"models_dir": str(directory), "picolm": {"binary": BINARY}}
    by_id = {model.id: model for model in catalog(settings, embedded=no_embedded)}
    assert list(by_id) == ["gemma-head", "smollm2", "tiny"]
    assert by_id["smollm2"].engine == "llama_cpp" and by_id["tiny"].engine == "picolm"
    assert "truncated GGUF" in str(by_id["gemma-head"].problem)
    # With the embedded model on the shelf, the link to its file is that model: one
    # file is one model, loaded once.
    assert ids(catalog(settings)) == [EMBEDDED_MODEL_ID, "gemma-head", "tiny"]


def test_a_directory_of_hostile_files_still_serves_its_good_model(tmp_path: Path) -> None:
    directory = tmp_path / "models"
    directory.mkdir()
    write_model(directory / "good.gguf")
    hostile = {**HOSTILE, **CHECKED_HOSTILE}
    for index, name in enumerate(sorted(hostile)):
        (directory / f"bad-{index}.gguf").write_bytes(hostile[name])
    shelf = catalog({"models_dir": str(directory)}, embedded=no_embedded)
    assert len(shelf) == len(hostile) + 1
    good = shelf.find("good")
    assert good is not None and good.problem is None and good.estimate_bytes > 0
    for model in shelf:
        if model is not good:
            assert model.problem is not None and "\n" not in model.problem, model.id
            assert (model.estimate_bytes, model.engine) == (0, "llama_cpp")
