"""Engines are built by one factory each, chosen from a table by the model's engine;
the shelf is built from the settings with its default model loaded."""

from __future__ import annotations

import logging
import typing

import pytest

from picolm_server.config.settings import ConfigError, Settings, load_settings
from picolm_server.generation.models import LoadedModel
from picolm_server.server import bootstrap
from picolm_server.shelf.catalog import ShelfModel
from tests.support.picolm_setup import MODEL_ID, PicoLMFiles


def test_every_engine_name_has_a_factory() -> None:
    names = typing.get_args(typing.get_type_hints(Settings.resolved_engine)["return"])
    assert set(bootstrap.ENGINE_FACTORIES) == set(names)


def test_the_model_s_engine_picks_the_factory(
    monkeypatch: pytest.MonkeyPatch, picolm_files: PicoLMFiles
) -> None:
    chosen: list[tuple[str, str]] = []

    def factory(name: str) -> typing.Callable[[Settings, ShelfModel], LoadedModel]:
        def build(settings: Settings, model: ShelfModel) -> LoadedModel:
            chosen.append((name, model.id))
            raise ConfigError(name)

        return build

    monkeypatch.setattr(
        bootstrap, "ENGINE_FACTORIES", {name: factory(name) for name in bootstrap.ENGINE_FACTORIES}
    )
    picolm = picolm_files.config()
    llama = {"llama_cpp": {"model_path": str(picolm_files.model), "model_id": "tiny"}}
    for config, expected in [(picolm, "picolm"), (llama, "llama_cpp")]:
        with pytest.raises(ConfigError) as caught:
            bootstrap.build_core(Settings.from_values(config))
        assert str(caught.value) == expected
    assert chosen == [("picolm", MODEL_ID), ("llama_cpp", "tiny")]


def test_the_picolm_section_names_what_is_missing() -> None:
    with pytest.raises(ConfigError, match=r"picolm\.binary: required"):
        bootstrap.build_core(load_settings(None, {"engine": "picolm"}))


def test_the_default_model_is_loaded_at_start_and_kept(picolm_files: PicoLMFiles) -> None:
    core = bootstrap.build_core(Settings.from_values(picolm_files.config()))
    shelf = core.models
    assert shelf.loaded_engine(MODEL_ID) is not None
    (model,) = shelf.describe()
    assert (model.id, model.engine, model.loaded) == (MODEL_ID, "picolm", True)
    assert model.chat_template is not None and model.chat_template.startswith("zephyr")


def test_the_factory_logs_the_chat_template_and_why(
    picolm_files: PicoLMFiles, caplog: pytest.LogCaptureFixture
) -> None:
    config = picolm_files.config()
    with caplog.at_level(logging.INFO, logger="picolm_server"):
        core = bootstrap.build_core(Settings.from_values(config))
    (model,) = core.models.describe()
    # The tiny LLaMA's vocabulary has no turn tokens and its GGUF no template.
    template = model.chat_template
    assert template is not None
    assert template.startswith("zephyr (no template in the GGUF and no turn tokens")
    assert f"chat template: {template}" in caplog.messages
    config["picolm"]["chat_template"] = "chatml"
    with caplog.at_level(logging.INFO, logger="picolm_server"):
        core = bootstrap.build_core(Settings.from_values(config))
    assert "chat template: chatml (set by picolm.chat_template)" in caplog.messages
    assert core.models.describe()[0].chat_template == "chatml (set by picolm.chat_template)"
