"""Engines are built by one factory each, chosen from a table by the resolved name."""

from __future__ import annotations

import logging
import typing

import pytest

from picolm_server.config.settings import ConfigError, Settings, load_settings
from picolm_server.server import bootstrap
from tests.support.picolm_setup import PicoLMFiles


def test_every_engine_name_has_a_factory() -> None:
    names = typing.get_args(typing.get_type_hints(Settings.resolved_engine)["return"])
    assert set(bootstrap.ENGINE_FACTORIES) == set(names)


def test_the_resolved_name_picks_the_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen: list[str] = []

    def factory(name: str) -> typing.Callable[[Settings], bootstrap.BuiltEngine]:
        def build(settings: Settings) -> bootstrap.BuiltEngine:
            chosen.append(name)
            raise ConfigError(name)

        return build

    monkeypatch.setattr(
        bootstrap, "ENGINE_FACTORIES", {name: factory(name) for name in bootstrap.ENGINE_FACTORIES}
    )
    for overrides, expected in [
        ({"engine": "picolm"}, "picolm"),
        ({"engine": "llama_cpp"}, "llama_cpp"),
        ({"picolm": {"binary": "/x", "model_path": "/y"}}, "picolm"),
    ]:
        with pytest.raises(ConfigError) as caught:
            bootstrap.build_engine(load_settings(None, overrides))
        assert str(caught.value) == expected
    assert chosen == ["picolm", "llama_cpp", "picolm"]


def test_the_picolm_factory_names_what_is_missing() -> None:
    with pytest.raises(ConfigError, match=r"picolm\.binary: required"):
        bootstrap.build_engine(load_settings(None, {"engine": "picolm"}))


def test_the_factory_logs_the_chat_template_and_why(
    picolm_files: PicoLMFiles, caplog: pytest.LogCaptureFixture
) -> None:
    config = picolm_files.config()
    with caplog.at_level(logging.INFO, logger="picolm_server"):
        built = bootstrap.build_engine(Settings.from_values(config))
    # The tiny LLaMA's vocabulary has no turn tokens and its GGUF no template.
    assert built.template.name == "zephyr"
    assert built.template.reason.startswith("no template in the GGUF and no turn tokens")
    assert f"chat template: {built.template.description}" in caplog.messages
    config["picolm"]["chat_template"] = "chatml"
    with caplog.at_level(logging.INFO, logger="picolm_server"):
        chosen = bootstrap.build_engine(Settings.from_values(config)).template
    assert "chat template: chatml (set by picolm.chat_template)" in caplog.messages
    assert chosen.description == "chatml (set by picolm.chat_template)"
