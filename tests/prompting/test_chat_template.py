"""Chat templates: rendered as Hugging Face renders them, built-ins, stop strings, the
leading BOS text, and the errors templates raise."""

from __future__ import annotations

from pathlib import Path

import pytest

from picolm_server.errors import InvalidRequestError
from picolm_server.gguf import GGUFMetadata
from picolm_server.prompting.chat_template import (
    BUILTIN_TEMPLATES,
    ChatTemplate,
    TemplateSetupError,
    builtin_template_source,
    load_chat_template,
)
from picolm_server.prompting.template_choice import choose_builtin

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]


def builtin(name: str, **kwargs: object) -> ChatTemplate:
    return ChatTemplate(
        name,
        builtin_template_source(name),
        bos_token="<s>",
        eos_token="</s>",
        **kwargs,  # type: ignore[arg-type]
    )


def test_zephyr_renders_like_transformers() -> None:
    # What transformers' apply_chat_template gives with TinyLlama-Chat's template.
    expected = (
        "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n"
        "<|user|>\nBye</s>\n<|assistant|>\n"
    )
    assert builtin("zephyr").render(MESSAGES) == expected


def test_chatml() -> None:
    prompt = builtin("chatml").render(MESSAGES[:2])
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert (
        builtin("chatml").render(MESSAGES[:2], add_generation_prompt=False).endswith("<|im_end|>\n")
    )


def test_leading_bos_text_is_stripped_when_the_engine_adds_bos() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    assert builtin("llama2").render(messages) == "[INST] Hi [/INST]"
    kept = builtin("llama2", engine_adds_bos=False).render(messages)
    assert kept == "<s>[INST] Hi [/INST]"


def test_llama2_raises_on_roles_out_of_order() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        builtin("llama2").render([{"role": "assistant", "content": "x"}])
    assert caught.value.param == "messages" and "alternate" in caught.value.message


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_builtins_render_and_end_in_the_assistant_turn(name: str) -> None:
    template = builtin(name)
    prompt = template.render([{"role": "user", "content": "Hi"}])
    assert "Hi" in prompt
    assert template.stop_strings


def test_stop_strings_from_end_markers() -> None:
    assert "<|im_end|>" in builtin("chatml").stop_strings
    assert "</s>" in builtin("zephyr").stop_strings
    plain = ChatTemplate("plain", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert plain.stop_strings == ()


def test_hf_features_tojson_strftime_loopcontrols_trim_blocks() -> None:
    source = (
        "{% for m in messages %}\n"
        "  {% if m['role'] == 'system' %}{% continue %}{% endif %}\n"
        "{{ m | tojson }}\n"
        "{% endfor %}\n"
        "{{ strftime_now('%Y') | length }}"
    )
    prompt = ChatTemplate("t", source).render(
        [{"role": "system", "content": "x"}, {"role": "user", "content": "héllo"}]
    )
    assert prompt == '{"role": "user", "content": "héllo"}\n4'


def test_template_syntax_error_is_a_setup_error() -> None:
    with pytest.raises(TemplateSetupError, match="line"):
        ChatTemplate("broken", "{% for %}")


def test_sandbox_refuses_unsafe_access() -> None:
    template = ChatTemplate("evil", "{{ messages.__class__.__mro__ }}")
    with pytest.raises(InvalidRequestError):
        template.render([{"role": "user", "content": "x"}])


def metadata(**values: object) -> GGUFMetadata:
    base: dict[str, object] = {
        "general.architecture": "llama",
        "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "a"],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    return GGUFMetadata(Path("m.gguf"), {**base, **values})


def test_load_prefers_the_gguf_template() -> None:
    template = load_chat_template(
        "auto", metadata(**{"tokenizer.chat_template": "{{ bos_token }}X"})
    )
    assert template.name == "gguf"
    assert template.render([{"role": "user", "content": "a"}]) == "X"


def test_without_a_gguf_template_a_builtin_is_chosen() -> None:
    assert choose_builtin(metadata()).name == "zephyr"
    assert choose_builtin(metadata(**{"general.name": "Llama-2-7b-chat"})).name == "llama2"
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>"]
    chosen = load_chat_template("auto", metadata(**{"tokenizer.ggml.tokens": tokens}))
    assert chosen.name == "chatml"
    assert chosen.reason == "no template in the GGUF; its vocabulary has <|im_start|>"


def test_load_by_name_and_path(tmp_path: Path) -> None:
    assert load_chat_template("chatml", metadata()).name == "chatml"
    path = tmp_path / "mine.jinja"
    path.write_text("{{ messages[0]['content'] }}!")
    assert (
        load_chat_template(str(path), metadata()).render([{"role": "user", "content": "a"}]) == "a!"
    )
    with pytest.raises(TemplateSetupError, match="neither"):
        load_chat_template("no-such-template", metadata())
    with pytest.raises(TemplateSetupError):
        load_chat_template(str(tmp_path / "absent.jinja"), metadata())
