"""engine: auto picks PicoLM only for what PicoLM runs (LLaMA, SentencePiece with
scores, its tensor types, a binary configured), llama.cpp otherwise, and says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from picolm_server.gguf import GGMLType, read_gguf_metadata
from picolm_server.shelf.engine_choice import (
    EngineChoice,
    choose_engine,
    main_tensor_type,
    picolm_refusal,
)
from tests.shelf.conftest import write_model
from tests.support.tiny_llama_gguf import build_tiny_llama_gguf


def auto(path: Path, *, picolm: bool = True) -> EngineChoice:
    metadata = read_gguf_metadata(path, check_tensors=True)
    return choose_engine("auto", metadata, picolm_configured=picolm)


def test_a_model_picolm_runs_goes_to_picolm(tmp_path: Path) -> None:
    assert auto(write_model(tmp_path / "m.gguf")) == EngineChoice(
        "picolm", "picolm: llama architecture, SentencePiece, Q4_K"
    )
    tiny = build_tiny_llama_gguf(tmp_path / "tiny.gguf")  # the model the stand-in runs
    assert auto(tiny) == EngineChoice("picolm", "picolm: llama architecture, SentencePiece, F32")


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        ({"arch": "gemma3"}, "llama_cpp: gemma3 architecture is not one PicoLM runs"),
        ({"arch": ""}, "llama_cpp: an unnamed architecture is not one PicoLM runs"),
        ({"vocabulary": "gpt2"}, "llama_cpp: gpt2 vocabulary is not SentencePiece"),
        ({"scores": False}, "llama_cpp: its SentencePiece vocabulary has no scores"),
        (
            {"tensor_types": (GGMLType.Q4_K, GGMLType.Q5_1, GGMLType.Q4_1)},
            "llama_cpp: Q4_1, Q5_1 tensors are not a type PicoLM reads",
        ),
        (
            {"tensor_types": (GGMLType.BF16,)},
            "llama_cpp: BF16 tensors are not a type PicoLM reads",
        ),
    ],
)
def test_what_picolm_cannot_run_goes_to_llama_cpp(
    tmp_path: Path, shape: dict[str, object], reason: str
) -> None:
    assert auto(write_model(tmp_path / "m.gguf", **shape)) == EngineChoice("llama_cpp", reason)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "types",
    [
        (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q5_K, GGMLType.Q6_K),
        (GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.F16, GGMLType.F32),
    ],
)
def test_every_type_picolm_reads(tmp_path: Path, types: tuple[int, ...]) -> None:
    assert auto(write_model(tmp_path / "m.gguf", tensor_types=types)).engine == "picolm"


def test_without_a_picolm_binary_everything_goes_to_llama_cpp(tmp_path: Path) -> None:
    assert auto(write_model(tmp_path / "m.gguf"), picolm=False) == EngineChoice(
        "llama_cpp", "llama_cpp: no PicoLM binary is configured"
    )


def test_an_engine_set_in_the_configuration_is_kept(tmp_path: Path) -> None:
    metadata = read_gguf_metadata(write_model(tmp_path / "m.gguf"), check_tensors=True)
    assert choose_engine("picolm", metadata, picolm_configured=True) == EngineChoice(
        "picolm", "picolm: set in the configuration"
    )
    gemma = read_gguf_metadata(write_model(tmp_path / "g.gguf", arch="gemma3"))
    assert choose_engine("picolm", gemma, picolm_configured=True) == EngineChoice(
        "picolm",
        "picolm: set in the configuration, though gemma3 architecture is not one PicoLM runs",
    )
    assert choose_engine("llama_cpp", None, picolm_configured=True).engine == "llama_cpp"
    assert choose_engine("auto", None, picolm_configured=True) == EngineChoice(
        "llama_cpp", "llama_cpp: the file could not be read"
    )


def test_real_models(smollm2: Path, gemma_head: Path) -> None:
    assert auto(smollm2) == EngineChoice(
        "llama_cpp", "llama_cpp: gpt2 vocabulary is not SentencePiece"
    )
    smollm2_metadata = read_gguf_metadata(smollm2, check_tensors=True)
    assert main_tensor_type(smollm2_metadata) == GGMLType.Q4_1
    # Gemma's head (its metadata whole, its data cut): the architecture decides alone.
    gemma = read_gguf_metadata(gemma_head)
    assert picolm_refusal(gemma) == "gemma3 architecture is not one PicoLM runs"


def test_unchecked_tensors_are_not_taken_for_readable_ones(tmp_path: Path) -> None:
    metadata = read_gguf_metadata(write_model(tmp_path / "m.gguf"))  # no tensor table
    assert picolm_refusal(metadata) == "its tensors were not checked"
    assert main_tensor_type(metadata) is None
