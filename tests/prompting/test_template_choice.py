"""The built-in template for a GGUF without one, chosen from its vocabulary and
architecture: one small GGUF per model family, read by the server's own reader; the
family's prompt layout; and the family's end of turn ending a reply."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from picolm_server.config.settings import GenerationDefaults
from picolm_server.errors import InvalidRequestError
from picolm_server.generation import Conversation, GenerationSpec
from picolm_server.gguf import TOKENS_KEY, GGUFMetadata, GGUFValueType, read_gguf_metadata
from picolm_server.prompting.chat_template import ChatTemplate, load_chat_template
from picolm_server.prompting.template_choice import TemplateChoice, choose_builtin
from tests.support.gguf_bytes import Array, gguf_bytes
from tests.support.scripted_engine import ScriptedEngine
from tests.support.scripted_shelf import scripted_core

STRING, UINT32 = GGUFValueType.STRING, GGUFValueType.UINT32


@dataclass(frozen=True)
class Family:
    """A model family's GGUF head: architecture, vocabulary (special tokens and a few
    words), BOS and EOS, and the end of an assistant turn in its format."""

    architecture: str
    tokens: tuple[str, ...]
    bos: str
    eos: str
    end_of_turn: str
    name: str = ""


FAMILIES = {
    "gemma": Family(
        "gemma3",
        ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "▁Hi"),
        bos="<bos>",
        eos="<eos>",
        end_of_turn="<end_of_turn>",
    ),
    "chatml": Family(
        "qwen2",
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "Hi"),
        bos="<|endoftext|>",
        eos="<|im_end|>",
        end_of_turn="<|im_end|>",
    ),
    "llama3": Family(
        "llama",
        (
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "Hi",
        ),
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
        end_of_turn="<|eot_id|>",
    ),
    "mistral": Family(
        "llama",
        ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "▁Hi"),
        bos="<s>",
        eos="</s>",
        end_of_turn="</s>",
    ),
    "phi": Family(
        "phi3",
        ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"),
        bos="<s>",
        eos="<|endoftext|>",
        end_of_turn="<|end|>",
    ),
    # StableLM Zephyr: <|user|> turns that end with the EOS text.
    "zephyr": Family(
        "stablelm",
        ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "Hi"),
        bos="<|endoftext|>",
        eos="<|endoftext|>",
        end_of_turn="<|endoftext|>",
    ),
}


def write_gguf(path: Path, family: Family, **extra: str) -> Path:
    kvs = [
        ("general.architecture", STRING, family.architecture),
        ("tokenizer.ggml.model", STRING, "llama"),
        ("tokenizer.ggml.tokens", GGUFValueType.ARRAY, Array(STRING, family.tokens)),
        ("tokenizer.ggml.bos_token_id", UINT32, family.tokens.index(family.bos)),
        ("tokenizer.ggml.eos_token_id", UINT32, family.tokens.index(family.eos)),
        *((key, STRING, text) for key, text in extra.items()),
    ]
    path.write_bytes(gguf_bytes(kvs))
    return path


def read(path: Path) -> GGUFMetadata:
    return read_gguf_metadata(path, arrays=frozenset({TOKENS_KEY}))


@pytest.fixture(params=sorted(FAMILIES))
def family_gguf(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    name: str = request.param
    return name, write_gguf(tmp_path / f"{name}.gguf", FAMILIES[name])


def test_each_family_gets_its_template_from_its_vocabulary(family_gguf: tuple[str, Path]) -> None:
    name, path = family_gguf
    choice = choose_builtin(read(path))
    assert choice.name == name
    assert choice.reason.startswith("no template in the GGUF; its vocabulary has ")
    if name == "phi":
        # <|user|> is Zephyr's too: the architecture tells Phi-3 apart.
        assert choice.reason.endswith("<|user|>, architecture phi3")


def test_the_reason_names_the_token_and_is_kept_on_the_template(tmp_path: Path) -> None:
    template = load_chat_template("auto", read(write_gguf(tmp_path / "g.gguf", FAMILIES["gemma"])))
    assert template.name == "gemma"
    assert template.reason == "no template in the GGUF; its vocabulary has <start_of_turn>"
    assert template.description == (
        "gemma (no template in the GGUF; its vocabulary has <start_of_turn>)"
    )


def test_the_end_of_turn_is_a_stop_string(family_gguf: tuple[str, Path]) -> None:
    name, path = family_gguf
    template = load_chat_template("auto", read(path))
    assert FAMILIES[name].end_of_turn in template.stop_strings


def test_the_end_of_turn_ends_the_reply_printed_as_text(family_gguf: tuple[str, Path]) -> None:
    """An engine that prints control tokens as text (PicoLM) runs on past the end of
    the turn into a forged next one; the template's stop strings end the reply there."""
    name, path = family_gguf
    template = load_chat_template("auto", read(path))
    end = FAMILIES[name].end_of_turn
    engine = ScriptedEngine(pieces=("Paris", f".{end}\nuser\n", "What else?"))
    core = scripted_core(engine, template=template, defaults=GenerationDefaults(max_tokens=20))
    spec = GenerationSpec(Conversation(({"role": "user", "content": "Capital of France?"},)))
    reply = asyncio.run(core.complete(spec))
    assert (reply.text, reply.finish_reason) == ("Paris.", "stop")


def test_the_gguf_template_comes_first_and_a_setting_overrides_both(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "g.gguf", FAMILIES["gemma"], **{"tokenizer.chat_template": "{{ 'X' }}"}
    )
    own = load_chat_template("auto", read(path))
    assert (own.name, own.reason) == ("gguf", "the GGUF's own tokenizer.chat_template")
    chosen = load_chat_template("chatml", read(path), setting_name="models[0].chat_template")
    assert (chosen.name, chosen.reason) == ("chatml", "set by models[0].chat_template")
    assert chosen.description == "chatml (set by models[0].chat_template)"


def test_the_first_clue_wins_when_a_vocabulary_has_several(tmp_path: Path) -> None:
    # A ChatML fine-tune of a model whose tokenizer also has <|user|>.
    mixed = Family("llama", ("<s>", "</s>", "<|user|>", "<|im_start|>", "<|im_end|>"),
                   bos="<s>", eos="</s>", end_of_turn="<|im_end|>")  # fmt: skip
    assert choose_builtin(read(write_gguf(tmp_path / "m.gguf", mixed))).name == "chatml"


def test_without_turn_tokens_the_architecture_then_the_name_then_zephyr(tmp_path: Path) -> None:
    plain = ("<unk>", "<s>", "</s>", "▁Hi")

    def choose(architecture: str, name: str = "") -> TemplateChoice:
        family = Family(architecture, plain, bos="<s>", eos="</s>", end_of_turn="</s>")
        extra = {"general.name": name} if name else {}
        return choose_builtin(read(write_gguf(tmp_path / "p.gguf", family, **extra)))

    assert choose("gemma2") == TemplateChoice(
        "gemma", "no template in the GGUF; architecture gemma2"
    )
    llama2 = choose("llama", "Llama-2-7b-chat")
    assert llama2 == TemplateChoice(
        "llama2", "no template in the GGUF; its name is 'Llama-2-7b-chat'"
    )
    fallback = choose("llama", "TinyLlama-1.1B-Chat")
    assert fallback.name == "zephyr" and "no turn tokens known" in fallback.reason


def test_phi3_needs_its_architecture_or_its_end_token(tmp_path: Path) -> None:
    tokens = ("<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>")
    family = Family("llama", tokens, bos="<s>", eos="</s>", end_of_turn="</s>")
    assert choose_builtin(read(write_gguf(tmp_path / "z.gguf", family))).name == "zephyr"
    with_end = Family("llama", (*tokens, "<|end|>"), bos="<s>", eos="</s>", end_of_turn="<|end|>")
    assert choose_builtin(read(write_gguf(tmp_path / "p.gguf", with_end))).name == "phi"


def family_template(tmp_path: Path, name: str, *, engine_adds_bos: bool = True) -> ChatTemplate:
    path = write_gguf(tmp_path / f"{name}.gguf", FAMILIES[name])
    return load_chat_template("auto", read(path), engine_adds_bos=engine_adds_bos)


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]


def test_gemma_puts_the_system_message_in_the_first_user_turn(tmp_path: Path) -> None:
    # What transformers' apply_chat_template gives with gemma-3-270m-it's template.
    expected = (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    # The engine adds <bos> itself: written once, never twice.
    assert family_template(tmp_path, "gemma").render(CONVERSATION) == expected
    kept = family_template(tmp_path, "gemma", engine_adds_bos=False).render(CONVERSATION)
    assert kept == "<bos>" + expected
    with pytest.raises(InvalidRequestError, match="alternate"):
        family_template(tmp_path, "gemma").render(
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        )


def test_gemma_marks_its_turns_as_template_text(tmp_path: Path) -> None:
    split = family_template(tmp_path, "gemma").render_split(CONVERSATION[:2])
    assert split.is_split
    template_text = "".join(piece.text for piece in split.pieces if not piece.from_request)
    assert "<start_of_turn>user\n" in template_text and "<end_of_turn>\n" in template_text
    assert [piece.text for piece in split.pieces if piece.from_request] == ["Be brief.", "Hi"]


def test_llama3_layout(tmp_path: Path) -> None:
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert family_template(tmp_path, "llama3").render(CONVERSATION) == expected


def test_mistral_layout(tmp_path: Path) -> None:
    # Mistral's v3 format: the system message goes before the last user message.
    expected = "[INST] Hi[/INST] Hello!</s>[INST] Be brief.\n\nBye[/INST]"
    assert family_template(tmp_path, "mistral").render(CONVERSATION) == expected
